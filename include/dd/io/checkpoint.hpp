#pragma once
// Checkpoints of a run-time configured DDU-Net in the safetensors format: every parameter and
// buffer under a name that says where it lives ("model.enc1.conv2.weight"), the model's
// hyperparameters in the metadata, and optionally the optimizer and schedule state so that
// --resume continues exactly where the run stopped.
#include <charconv>
#include <cstdio>

#include <fmt/ranges.h>
#include <map>
#include <string>

#include "dd/decomposition/domain_decomposed.hpp"
#include "dd/io/safetensors.hpp"
#include "dd/models/dynamic_unet.hpp"
#include "dd/training/trainer.hpp"

namespace dd {

using DDUNet = DomainDecomposed<DynamicUNet, DynamicCommNet>;

// Everything needed to rebuild a model.
struct ModelSpec {
  UNetConfig net;
  int F = 0, comm_layers = 3, comm_kernel = 5;
  Exchange mode = Exchange::stitched;
  GridSpec grid{1, 1};

  std::string describe() const {
    return F == 0 && grid.rows * grid.cols == 1
               ? fmt::format("U-Net({}) base {}, {} -> {} classes", net.depth, net.base, net.in_channels, net.classes)
               : fmt::format("DDU-Net({}, {}, {}) base {}, {} -> {} classes, grid {}x{}", net.depth, F,
                             exchange_name(mode), net.base, net.in_channels, net.classes, grid.rows, grid.cols);
  }
};

inline DDUNet make_model(const ModelSpec& s, std::uint64_t seed, CpuWorkers workers = CpuWorkers{}) {
  return DDUNet(DynamicUNet(s.net), DynamicCommNet(s.F, s.comm_layers, s.comm_kernel, s.net.dropout), s.grid, s.mode,
                seed, workers);
}

namespace detail {

inline std::string num(double v) { return fmt::format("{:.17g}", v); }

// Reads metadata[key] of a checkpoint as a number, with errors that name the file and the key.
template <class T>
T meta_number(const safetensors::File& f, const std::string& key, const std::string& path) {
  const auto it = f.metadata.find(key);
  DD_CHECK(it != f.metadata.end(), "checkpoint {}: metadata has no \"{}\" (not a ddunet checkpoint, or an older one)",
           path, key);
  try {
    std::size_t used = 0;
    const double v = std::stod(it->second, &used);
    DD_CHECK(used == it->second.size(), "bad number");
    return static_cast<T>(v);
  } catch (...) {
    fail("checkpoint {}: metadata \"{}\" = \"{}\" is not a number", path, key, it->second);
  }
}
inline std::string meta_string(const safetensors::File& f, const std::string& key, const std::string& path) {
  const auto it = f.metadata.find(key);
  DD_CHECK(it != f.metadata.end(), "checkpoint {}: metadata has no \"{}\"", path, key);
  return it->second;
}

inline std::vector<std::int64_t> dims(Shape s) { return {s.n, s.c, s.h, s.w}; }

// All named slots of a model: parameters and buffers (buffers flagged).
struct NamedSlot {
  TensorSlot slot;
  bool buffer;
};
inline std::vector<NamedSlot> named_slots(const DDUNet& m) {
  std::vector<TensorSlot> ps, bs;
  m.network().slots(ps, bs);
  m.communication().slots("comm", m.num_net_params(), m.num_net_buffers(), ps, bs);
  std::vector<NamedSlot> out;
  for (auto& s : ps) out.push_back({s, false});
  for (auto& s : bs) out.push_back({s, true});
  return out;
}

inline void put(safetensors::File& f, const std::string& name, const float* src, Shape s) {
  safetensors::Entry e{name, dims(s), std::vector<float>(src, src + s.numel())};
  f.tensors.push_back(std::move(e));
}
inline void take(const safetensors::File& f, const std::string& name, float* dst, Shape s, const std::string& path) {
  const safetensors::Entry* e = f.find(name);
  DD_CHECK(e != nullptr, "checkpoint {}: tensor \"{}\" is missing (the checkpoint belongs to another model)", path,
           name);
  DD_CHECK(e->shape == dims(s), "checkpoint {}: tensor \"{}\" has shape [{}] but the model expects [{}]", path, name,
           fmt::join(e->shape, ", "), fmt::join(dims(s), ", "));
  std::copy(e->data.begin(), e->data.end(), dst);
}

}  // namespace detail

inline std::map<std::string, std::string> spec_metadata(const ModelSpec& s) {
  return {{"format", "ddunet-checkpoint"},
          {"version", "1"},
          {"depth", std::to_string(s.net.depth)},
          {"in_channels", std::to_string(s.net.in_channels)},
          {"classes", std::to_string(s.net.classes)},
          {"base", std::to_string(s.net.base)},
          {"dropout", detail::num(s.net.dropout)},
          {"F", std::to_string(s.F)},
          {"comm_layers", std::to_string(s.comm_layers)},
          {"comm_kernel", std::to_string(s.comm_kernel)},
          {"exchange", exchange_name(s.mode)},
          {"grid", fmt::format("{}x{}", s.grid.rows, s.grid.cols)}};
}

inline ModelSpec spec_from_checkpoint(const safetensors::File& f, const std::string& path) {
  DD_CHECK(detail::meta_string(f, "format", path) == "ddunet-checkpoint",
           "checkpoint {}: format \"{}\" is not a ddunet checkpoint", path, detail::meta_string(f, "format", path));
  ModelSpec s;
  s.net.depth = detail::meta_number<int>(f, "depth", path);
  s.net.in_channels = detail::meta_number<int>(f, "in_channels", path);
  s.net.classes = detail::meta_number<int>(f, "classes", path);
  s.net.base = detail::meta_number<int>(f, "base", path);
  s.net.dropout = detail::meta_number<float>(f, "dropout", path);
  s.F = detail::meta_number<int>(f, "F", path);
  s.comm_layers = detail::meta_number<int>(f, "comm_layers", path);
  s.comm_kernel = detail::meta_number<int>(f, "comm_kernel", path);
  const std::string ex = detail::meta_string(f, "exchange", path);
  DD_CHECK(ex == "Y" || ex == "N", "checkpoint {}: exchange \"{}\" is neither Y nor N", path, ex);
  s.mode = ex == "Y" ? Exchange::stitched : Exchange::local;
  const std::string grid = detail::meta_string(f, "grid", path);
  DD_CHECK(std::sscanf(grid.c_str(), "%ldx%ld", &s.grid.rows, &s.grid.cols) == 2,
           "checkpoint {}: grid \"{}\" is not ROWSxCOLS", path, grid);
  return s;
}

// The model's weights and buffers (and, with a trainer, the optimizer and schedule state).
inline void save_checkpoint(const std::string& path, const ModelSpec& spec, const DDUNet& model,
                            Trainer<DDUNet>* trainer = nullptr, const std::map<std::string, std::string>& extra = {}) {
  safetensors::File f;
  f.metadata = spec_metadata(spec);
  for (const auto& [k, v] : extra) f.metadata[k] = v;
  const auto slots = detail::named_slots(model);
  // Host images of everything saved (the model may live on the GPU).
  const Tensor params = model.parameters().to(Device::cpu), buffers = model.buffers().to(Device::cpu);
  for (const auto& [s, buffer] : slots)
    detail::put(f, "model." + s.name, (buffer ? buffers : params).data() + s.offset, s.shape);
  if (trainer) {
    const Adam& adam = trainer->optimizer();
    const std::vector<float> m = adam.first_moment(), v = adam.second_moment();
    const Tensor best_params = trainer->best_parameters().to(Device::cpu);
    const Tensor best_buffers = trainer->best_buffers().to(Device::cpu);
    f.metadata["epoch"] = std::to_string(trainer->epochs_done());
    f.metadata["lr"] = detail::num(adam.lr());
    f.metadata["adam_steps"] = std::to_string(adam.steps());
    const auto pl = trainer->plateau().state();
    const auto st = trainer->stopper().state();
    f.metadata["plateau_best"] = detail::num(pl.best);
    f.metadata["plateau_bad"] = std::to_string(pl.bad);
    f.metadata["stop_epoch"] = std::to_string(st.epoch);
    f.metadata["stop_since_best"] = std::to_string(st.since_best);
    f.metadata["stop_best"] = detail::num(st.best);
    f.metadata["dropout_rng"] = model.dropout_state();
    const LossScaleState ls = trainer->loss_scaler().state();
    f.metadata["loss_scale"] = detail::num(ls.scale);
    f.metadata["loss_scale_clean_steps"] = std::to_string(ls.clean_steps);
    f.metadata["loss_scale_skipped"] = std::to_string(ls.skipped);
    for (const auto& [s, buffer] : slots) {
      if (buffer) {
        detail::put(f, "best." + s.name, best_buffers.data() + s.offset, s.shape);
        continue;
      }
      detail::put(f, "adam.m." + s.name, m.data() + s.offset, s.shape);
      detail::put(f, "adam.v." + s.name, v.data() + s.offset, s.shape);
      detail::put(f, "best." + s.name, best_params.data() + s.offset, s.shape);
    }
  }
  safetensors::save(path, f);
}

// Copies a checkpoint's weights into a model built from the same spec.
inline void load_weights(const safetensors::File& f, DDUNet& model, const std::string& path) {
  const Tensor params = model.parameters().to(Device::cpu).clone(), buffers = model.buffers().to(Device::cpu).clone();
  for (const auto& [s, buffer] : detail::named_slots(model))
    detail::take(f, "model." + s.name, (buffer ? buffers : params).data() + s.offset, s.shape, path);
  model.parameters().copy_from(params);
  model.buffers().copy_from(buffers);
}

// Restores what save_checkpoint(..., trainer) stored; the model's weights must be loaded too.
inline void load_training_state(const safetensors::File& f, DDUNet& model, Trainer<DDUNet>& trainer,
                                const std::string& path) {
  DD_CHECK(f.metadata.count("epoch"), "checkpoint {}: holds no training state (it was saved for inference)", path);
  const auto slots = detail::named_slots(model);
  const std::size_t n = model.num_params();
  std::vector<float> m(n), v(n);
  const Tensor best_params = trainer.best_parameters().to(Device::cpu).clone();
  const Tensor best_buffers = trainer.best_buffers().to(Device::cpu).clone();
  for (const auto& [s, buffer] : slots) {
    if (buffer) {
      detail::take(f, "best." + s.name, best_buffers.data() + s.offset, s.shape, path);
      continue;
    }
    detail::take(f, "adam.m." + s.name, m.data() + s.offset, s.shape, path);
    detail::take(f, "adam.v." + s.name, v.data() + s.offset, s.shape, path);
    detail::take(f, "best." + s.name, best_params.data() + s.offset, s.shape, path);
  }
  trainer.best_parameters().copy_from(best_params);
  trainer.best_buffers().copy_from(best_buffers);
  trainer.optimizer().load_state(std::move(m), std::move(v), detail::meta_number<std::int64_t>(f, "adam_steps", path));
  trainer.optimizer().set_lr(detail::meta_number<float>(f, "lr", path));
  trainer.plateau().set_state({detail::meta_number<double>(f, "plateau_best", path),
                               detail::meta_number<int>(f, "plateau_bad", path)});
  trainer.stopper().set_state({detail::meta_number<int>(f, "stop_epoch", path),
                               detail::meta_number<int>(f, "stop_since_best", path),
                               detail::meta_number<double>(f, "stop_best", path)});
  trainer.set_epochs_done(detail::meta_number<int>(f, "epoch", path));
  if (f.metadata.count("loss_scale")) {  // checkpoints from before 2026-11-28 hold none: the initial scale
    LossScaleState ls;
    ls.scale = detail::meta_number<float>(f, "loss_scale", path);
    ls.clean_steps = detail::meta_number<std::int32_t>(f, "loss_scale_clean_steps", path);
    ls.skipped = detail::meta_number<std::int64_t>(f, "loss_scale_skipped", path);
    try {
      trainer.loss_scaler().set_state(ls);
    } catch (const dd::Error& e) {
      fail("checkpoint {}: {}", path, e.what());
    }
  }
  try {
    model.set_dropout_state(detail::meta_string(f, "dropout_rng", path));
  } catch (const std::invalid_argument& e) {
    fail("checkpoint {}: {}", path, e.what());
  }
}

}  // namespace dd
