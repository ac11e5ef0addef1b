// Checkpoints: round trips, exact resumption, and rejection of corrupt or mismatched files.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include <dd/ddunet.hpp>

using dd::Tensor;
using dd::Var;
namespace fs = std::filesystem;

namespace {
fs::path scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("dd_ckpt_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}
dd::ModelSpec small_spec() {
  dd::ModelSpec s;
  s.net = {2, 1, 3, 4, 0.1f};
  s.F = 4;
  s.grid = {1, 2};
  s.mode = dd::Exchange::stitched;
  return s;
}
}  // namespace

TEST_CASE("checkpoint: save and load give identical outputs, named tensors, hyperparameters") {
  const dd::ModelSpec spec = small_spec();
  dd::DDUNet a = dd::make_model(spec, 1);
  // Change the weights and statistics away from their initial values.
  const auto data = dd::make_circles(8, 2, {.subimages = 2});
  dd::fit(a, data, {}, 3, {.epochs = 1, .batch = 4, .lr = 0.01f});
  const std::string path = scratch("roundtrip.safetensors").string();
  dd::save_checkpoint(path, spec, a);

  const dd::safetensors::File f = dd::safetensors::load(path);
  CHECK(f.find("model.enc0.conv1.weight") != nullptr);
  CHECK(f.find("model.comm.layer1.conv1.bias") != nullptr);
  CHECK(f.find("model.enc2.bn2.running_var") != nullptr);
  const dd::ModelSpec back = dd::spec_from_checkpoint(f, path);
  CHECK(dd::spec_metadata(back) == dd::spec_metadata(spec));
  dd::DDUNet b = dd::make_model(back, 99);  // other seed: other initial weights
  dd::load_weights(f, b, path);
  CHECK(a.parameters().to_vector() == b.parameters().to_vector());
  CHECK(a.buffers().to_vector() == b.buffers().to_vector());
  a.eval(), b.eval();
  dd::NoGrad ng;
  CHECK(a.forward(Var(data.images)).value().to_vector() == b.forward(Var(data.images)).value().to_vector());
  fs::remove(path);
}

TEST_CASE("checkpoint: --resume continues with the same losses as an uninterrupted run") {
  const dd::ModelSpec spec = small_spec();
  const auto train = dd::make_circles(32, 3, {.subimages = 2});
  const auto val = dd::make_circles(8, 4, {.subimages = 2});
  dd::TrainOptions o{.epochs = 4, .batch = 8, .lr = 0.01f, .lr_patience = 0, .min_epochs = 4, .shuffle_seed = 5};
  SUBCASE("fp32") {}
  SUBCASE("loss-scaled (fp16 training): the scale resumes too") {
    o.loss_scaling = true;
    o.loss_scaler = {.initial_scale = 1024.0f, .growth_interval = 3};  // it grows during the run
  }

  dd::DDUNet straight = dd::make_model(spec, 7);
  dd::Trainer<dd::DDUNet> t1(straight, 3, o);
  std::vector<double> expected;
  while (!t1.done()) expected.push_back(t1.run_epoch(train, val).train_loss);

  dd::DDUNet first = dd::make_model(spec, 7);
  dd::Trainer<dd::DDUNet> t2(first, 3, o);
  std::vector<double> got;
  got.push_back(t2.run_epoch(train, val).train_loss);
  got.push_back(t2.run_epoch(train, val).train_loss);
  const std::string path = scratch("resume.safetensors").string();
  dd::save_checkpoint(path, spec, first, &t2);

  const dd::safetensors::File f = dd::safetensors::load(path);
  dd::DDUNet resumed = dd::make_model(dd::spec_from_checkpoint(f, path), 123);
  dd::Trainer<dd::DDUNet> t3(resumed, 3, o);
  dd::load_weights(f, resumed, path);
  dd::load_training_state(f, resumed, t3, path);
  CHECK(t3.epochs_done() == 2);
  while (!t3.done()) got.push_back(t3.run_epoch(train, val).train_loss);
  CHECK(got == expected);
  CHECK(resumed.parameters().to_vector() == straight.parameters().to_vector());
  const dd::LossScaleState a = t1.loss_scaler().state(), b = t3.loss_scaler().state();
  CHECK(b.scale == a.scale);
  CHECK(b.clean_steps == a.clean_steps);
  CHECK(b.skipped == a.skipped);
  if (o.loss_scaling) CHECK(a.scale == 32768.0f);  // 16 clean steps: 1024 * 2^5
  fs::remove(path);
}

TEST_CASE("checkpoint: corrupt, truncated and mismatched files are rejected with what is wrong") {
  const dd::ModelSpec spec = small_spec();
  dd::DDUNet m = dd::make_model(spec, 1);
  const std::string path = scratch("good.safetensors").string();
  dd::save_checkpoint(path, spec, m);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& name, const std::string& content) {
    const std::string p = scratch(name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  };
  SUBCASE("truncated") {
    const std::string p = write("truncated.safetensors", bytes.substr(0, bytes.size() - 100));
    CHECK_THROWS_WITH_AS(dd::safetensors::load(p), doctest::Contains("truncated.safetensors"), dd::Error);
  }
  SUBCASE("corrupt header") {
    std::string bad = bytes;
    bad[12] = '#';
    const std::string p = write("corrupt.safetensors", bad);
    CHECK_THROWS_AS(dd::safetensors::load(p), dd::Error);
  }
  SUBCASE("not a checkpoint") {
    const std::string p = write("random.safetensors", std::string(64, '\x7f'));
    CHECK_THROWS_AS(dd::safetensors::load(p), dd::Error);
  }
  SUBCASE("another architecture") {
    const dd::safetensors::File f = dd::safetensors::load(path);
    dd::ModelSpec other = spec;
    other.net.base = 8;
    dd::DDUNet wider = dd::make_model(other, 1);
    CHECK_THROWS_WITH_AS(dd::load_weights(f, wider, path), doctest::Contains("enc0.conv1.weight\" has shape [4, 1, 3, 3] but the model expects [8, 1, 3, 3]"), dd::Error);
    dd::safetensors::File no_meta = f;
    no_meta.metadata.erase("depth");
    CHECK_THROWS_WITH_AS(dd::spec_from_checkpoint(no_meta, path), doctest::Contains("\"depth\""), dd::Error);
    CHECK_THROWS_WITH_AS(dd::load_training_state(f, m, *std::make_unique<dd::Trainer<dd::DDUNet>>(m, 3, dd::TrainOptions{}), path),
                         doctest::Contains("no training state"), dd::Error);
  }
  fs::remove_all(scratch("").parent_path());
}

TEST_CASE("predict_tiled gives the all-at-once forward, for C = Y, C = N and a 1x1 grid") {
  for (auto [mode, grid] : {std::pair{dd::Exchange::stitched, dd::GridSpec{2, 3}}, {dd::Exchange::local, {2, 2}},
                            {dd::Exchange::stitched, {1, 1}}}) {
    dd::ModelSpec spec = small_spec();
    spec.mode = mode;
    spec.grid = grid;
    dd::DDUNet m = dd::make_model(spec, 3);
    const Tensor x = Tensor::randn({1, 1, 48, 72}, 4);
    m.eval();
    Tensor expect;
    {
      dd::NoGrad ng;
      expect = m.forward(Var(x)).value();
    }
    Tensor got = Tensor::zeros(expect.shape());
    int calls = 0;
    dd::predict_tiled(
        m, 48, 72, [&](const dd::TileRect& r) { return x.tile(r.y, r.h, r.x, r.w).contiguous(); },
        [&](const dd::TileRect& r, const Tensor& logits) {
          got.tile(r.y, r.h, r.x, r.w).copy_from(logits);
          ++calls;
        });
    CHECK(calls == grid.rows * grid.cols);
    CHECK(got.to_vector() == expect.to_vector());
  }
}
