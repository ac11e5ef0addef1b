#pragma once
// DynamicUNet / DynamicCommNet: the same networks as UNet<...> and CommNet<...>, with channel
// counts chosen at run time (a command-line tool cannot instantiate every combination). The
// parameter layout and the order of random draws match the typed networks exactly, so a typed
// and a dynamic network built from the same seed hold the same weights (tests check it).
#include <cmath>
#include <string>
#include <vector>

#include "dd/layers/conv_block.hpp"
#include "dd/models/unet.hpp"
#include "dd/ops/batch_norm.hpp"
#include "dd/ops/conv2d.hpp"
#include "dd/ops/conv_batch_norm.hpp"
#include "dd/ops/dropout.hpp"
#include "dd/ops/max_pool.hpp"
#include "dd/ops/relu.hpp"
#include "dd/ops/upconv.hpp"

namespace dd {

// One parameter or buffer tensor of a dynamic network: where it lives and what it is called.
struct TensorSlot {
  std::string name;
  std::size_t offset = 0;
  Shape shape;
};

namespace dyn {

// A conv (optionally biased) followed by nothing: weights [out, in, k, k].
struct ConvSpec {
  int in = 0, out = 0, k = 3;
  bool bias = false;
  std::size_t po = 0;
  std::size_t count() const { return std::size_t(out) * in * k * k + (bias ? out : 0); }
  void init(Rng& rng, float* p) const {
    const float std = std::sqrt(2.0f / static_cast<float>(in * k * k));
    const std::size_t w = std::size_t(out) * in * k * k;
    for (std::size_t i = 0; i < w; ++i) p[po + i] = std * rng.normal();
    for (std::size_t i = w; i < count(); ++i) p[po + i] = 0.0f;
  }
  // Over the channel concatenation of `parts` (one or more, never built: see dd::conv2d).
  Var forward(Context& ctx, const std::vector<Var>& parts) const {
    const std::size_t w = std::size_t(out) * in * k * k;
    return conv2d(parts, ctx.param(po, {out, in, k, k}), bias ? ctx.param(po + w, {out, 1, 1, 1}) : Var{},
                  {k / 2, 1, 1});
  }
  Var forward(Context& ctx, const Var& x) const { return forward(ctx, std::vector<Var>{x}); }
  void slots(const std::string& name, std::vector<TensorSlot>& ps) const {
    ps.push_back({name + ".weight", po, {out, in, k, k}});
    if (bias) ps.push_back({name + ".bias", po + std::size_t(out) * in * k * k, {out, 1, 1, 1}});
  }
};

struct BatchNormSpec {
  static constexpr float momentum = BatchNorm<1>::momentum, eps = BatchNorm<1>::eps;  // the typed layer's
  int c = 0;
  std::size_t po = 0, bo = 0;
  void init(float* p, float* b) const {
    for (int i = 0; i < c; ++i) p[po + i] = 1.0f, p[po + c + i] = 0.0f, b[bo + i] = 0.0f, b[bo + c + i] = 1.0f;
  }
  // Normalisation, ReLU and (in training) dropout with probability p, fused.
  Var forward(Context& ctx, const Var& x, float p) const {
    return batch_norm_relu_dropout(x, ctx.param(po, {c, 1, 1, 1}), ctx.param(po + c, {c, 1, 1, 1}),
                                   ctx.buffer(bo, {c, 1, 1, 1}), ctx.buffer(bo + c, {c, 1, 1, 1}),
                                   {ctx.training, momentum, eps}, p, ctx.training && p > 0.0f ? ctx.rng : nullptr);
  }
  void slots(const std::string& name, std::vector<TensorSlot>& ps, std::vector<TensorSlot>& bs) const {
    ps.push_back({name + ".weight", po, {c, 1, 1, 1}});
    ps.push_back({name + ".bias", po + c, {c, 1, 1, 1}});
    bs.push_back({name + ".running_mean", bo, {c, 1, 1, 1}});
    bs.push_back({name + ".running_var", bo + c, {c, 1, 1, 1}});
  }
};

// Conv -> BN -> ReLU -> Dropout2d, `convs` times (2 in the U-Net, 1 per comm-net layer).
struct ConvBlock {
  std::vector<ConvSpec> convs;
  std::vector<BatchNormSpec> norms;
  float dropout = 0.1f;

  static ConvBlock make(int in, int out, int n, int k, bool bias, float dropout, std::size_t& po, std::size_t& bo) {
    ConvBlock b;
    b.dropout = dropout;
    for (int i = 0; i < n; ++i) {
      ConvSpec c{i == 0 ? in : out, out, k, bias, po};
      po += c.count();
      b.convs.push_back(c);
      b.norms.push_back({out, po, bo});
      po += 2 * std::size_t(out);
      bo += 2 * std::size_t(out);
    }
    return b;
  }
  void init(Rng& rng, float* p, float* b) const {
    for (std::size_t i = 0; i < convs.size(); ++i) convs[i].init(rng, p), norms[i].init(p, b);
  }
  // The first convolution takes the channel concatenation of `parts`. In inference each batch norm
  // is folded into its convolution (dd::conv2d_batch_norm_relu), as in the typed networks.
  Var forward(Context& ctx, const std::vector<Var>& parts) const {
    Var x = parts.size() == 1 ? parts[0] : Var{};
    for (std::size_t i = 0; i < convs.size(); ++i) {
      const std::vector<Var> in = i == 0 ? parts : std::vector<Var>{x};
      x = folds_batch_norm(ctx) ? folded(ctx, i, in) : norms[i].forward(ctx, convs[i].forward(ctx, in), dropout);
    }
    return x;
  }
  Var forward(Context& ctx, const Var& x) const { return forward(ctx, std::vector<Var>{x}); }
  Var folded(Context& ctx, std::size_t i, const std::vector<Var>& in) const {
    const ConvSpec& c = convs[i];
    const BatchNormSpec& n = norms[i];
    const std::size_t w = std::size_t(c.out) * c.in * c.k * c.k;
    return conv2d_batch_norm_relu(
        in, ctx.param(c.po, {c.out, c.in, c.k, c.k}), c.bias ? ctx.param(c.po + w, {c.out, 1, 1, 1}) : Var{},
        ctx.param(n.po, {n.c, 1, 1, 1}), ctx.param(n.po + n.c, {n.c, 1, 1, 1}), ctx.buffer(n.bo, {n.c, 1, 1, 1}),
        ctx.buffer(n.bo + n.c, {n.c, 1, 1, 1}), BatchNormSpec::eps, {c.k / 2, 1, 1});
  }
  void slots(const std::string& name, std::vector<TensorSlot>& ps, std::vector<TensorSlot>& bs) const {
    for (std::size_t i = 0; i < convs.size(); ++i) {
      convs[i].slots(name + ".conv" + std::to_string(i + 1), ps);
      norms[i].slots(name + ".bn" + std::to_string(i + 1), ps, bs);
    }
  }
};

}  // namespace dyn

struct UNetConfig {
  int depth = 3, in_channels = 1, classes = 3, base = 4;
  float dropout = 0.1f;
};

class DynamicUNet {
 public:
  explicit DynamicUNet(UNetConfig c) : c_(c) {
    DD_CHECK(c.depth >= 1 && c.depth <= 10, "dd::DynamicUNet: depth {} is not in 1..10", c.depth);
    DD_CHECK(c.in_channels > 0 && c.classes > 0 && c.base > 0,
             "dd::DynamicUNet: channels must be positive (in {}, classes {}, base {})", c.in_channels, c.classes,
             c.base);
    DD_CHECK(c.dropout >= 0.0f && c.dropout < 1.0f, "dd::DynamicUNet: dropout {} is not in [0, 1)", c.dropout);
    std::size_t po = 0, bo = 0;
    in_ = dyn::ConvBlock::make(c.in_channels, c.base, 2, 3, false, c.dropout, po, bo);
    for (int l = 1; l <= c.depth; ++l) down_.push_back(dyn::ConvBlock::make(ch(l - 1), ch(l), 2, 3, false, c.dropout, po, bo));
    encoder_params_ = po;
    for (int l = c.depth - 1; l >= 0; --l) {  // parameter order: Up D-1 first, as in UNet<...>
      up_conv_.push_back({ch(l + 1), ch(l), po});
      po += std::size_t(ch(l + 1)) * ch(l) * 4 + ch(l);
      up_.push_back(dyn::ConvBlock::make(2 * ch(l), ch(l), 2, 3, false, c.dropout, po, bo));
    }
    head_ = {c.base, c.classes, 1, true, po};
    params_ = po + head_.count();
    buffers_ = bo;
  }

  const UNetConfig& config() const { return c_; }
  int ch(int level) const { return c_.base << level; }
  int depth() const { return c_.depth; }
  int in_channels() const { return c_.in_channels; }
  int classes() const { return c_.classes; }
  std::int64_t downsampling() const { return std::int64_t{1} << c_.depth; }
  int bottleneck_channels() const { return ch(c_.depth); }
  std::size_t param_count() const { return params_; }
  std::size_t buffer_count() const { return buffers_; }
  std::size_t encoder_param_count() const { return encoder_params_; }
  // Receptive field: the typed formula (12 * 2^D - 4, paper Table 4) holds for every base.
  std::int64_t receptive_field() const { return 12 * downsampling() - 4; }

  void init(Rng& rng, float* p, float* b) const {
    in_.init(rng, p, b);
    for (const auto& d : down_) d.init(rng, p, b);
    for (std::size_t i = 0; i < up_.size(); ++i) {
      const UpSpec& u = up_conv_[i];
      const float std = std::sqrt(2.0f / static_cast<float>(u.in));
      const std::size_t w = std::size_t(u.in) * u.out * 4;
      for (std::size_t k = 0; k < w; ++k) p[u.po + k] = std * rng.normal();
      for (int k = 0; k < u.out; ++k) p[u.po + w + std::size_t(k)] = 0.0f;
      up_[i].init(rng, p, b);
    }
    head_.init(rng, p);
  }

  void check_input(const Shape& s) const {
    DD_CHECK(s.numel() > 0, "dd::UNet: empty input (shape {})", s);
    DD_CHECK(s.c == c_.in_channels, "dd::UNet: input has {} channels but the network was built for {} (input shape {})",
             s.c, c_.in_channels, s);
    DD_CHECK(s.h % downsampling() == 0 && s.w % downsampling() == 0,
             "dd::UNet: input size {}x{} (HxW) is not divisible by 2^{} = {}: a depth-{} U-Net halves the image {} "
             "times; pad or crop both sides to a multiple of {}",
             s.h, s.w, c_.depth, downsampling(), c_.depth, c_.depth, downsampling());
  }

  // po/bo must be 0: a dynamic network always starts its model's buffers.
  UNetFeatures encode(Context& ctx, const Var& x, std::size_t = 0, std::size_t = 0) const {
    UNetFeatures f;
    Var h = in_.forward(ctx, x);
    for (const auto& d : down_) {
      f.skips.push_back(h);
      h = d.forward(ctx, max_pool2x2(h));
    }
    f.bottleneck = h;
    return f;
  }
  Var decode(Context& ctx, const UNetFeatures& f, std::size_t = 0, std::size_t = 0) const {
    DD_CHECK(f.skips.size() == std::size_t(c_.depth), "dd::UNet::decode: {} skip tensors for depth {}", f.skips.size(),
             c_.depth);
    Var h = f.bottleneck;
    for (std::size_t i = 0; i < up_.size(); ++i) {
      const UpSpec& u = up_conv_[i];
      const std::size_t w = std::size_t(u.in) * u.out * 4;
      const Var up = upconv2x2(h, ctx.param(u.po, {u.in, u.out, 2, 2}), ctx.param(u.po + w, {u.out, 1, 1, 1}));
      h = up_[i].forward(ctx, {f.skips[std::size_t(c_.depth) - 1 - i], up});
    }
    return head_.forward(ctx, h);
  }
  Var forward(Context& ctx, const Var& x, std::size_t = 0, std::size_t = 0) const { return decode(ctx, encode(ctx, x)); }

  // Every parameter and buffer with a name that says where it lives (PyTorch-style).
  void slots(std::vector<TensorSlot>& ps, std::vector<TensorSlot>& bs) const {
    in_.slots("enc0", ps, bs);
    for (std::size_t l = 0; l < down_.size(); ++l) down_[l].slots("enc" + std::to_string(l + 1), ps, bs);
    for (std::size_t i = 0; i < up_.size(); ++i) {
      const std::string name = "dec" + std::to_string(c_.depth - 1 - int(i));
      const UpSpec& u = up_conv_[i];
      ps.push_back({name + ".up.weight", u.po, {u.in, u.out, 2, 2}});
      ps.push_back({name + ".up.bias", u.po + std::size_t(u.in) * u.out * 4, {u.out, 1, 1, 1}});
      up_[i].slots(name, ps, bs);
    }
    head_.slots("head", ps);
  }

 private:
  struct UpSpec {
    int in, out;
    std::size_t po;
  };
  UNetConfig c_;
  dyn::ConvBlock in_;
  std::vector<dyn::ConvBlock> down_, up_;
  std::vector<UpSpec> up_conv_;
  dyn::ConvSpec head_;
  std::size_t params_ = 0, buffers_ = 0, encoder_params_ = 0;
};

// The communication network with F, layers and kernel size chosen at run time. Its parameters
// start at the offsets its model passes to forward (after the clones').
class DynamicCommNet {
 public:
  DynamicCommNet(int F, int layers = 3, int kernel = 5, float dropout = 0.1f) : F_(F), layers_(layers), kernel_(kernel) {
    DD_CHECK(F >= 0, "dd::DynamicCommNet: F = {} must not be negative", F);
    DD_CHECK(layers > 0 && kernel > 0 && kernel % 2 == 1, "dd::DynamicCommNet: {} layers of {}x{} kernels: need at least "
             "one layer and an odd kernel", layers, kernel, kernel);
    std::size_t po = 0, bo = 0;
    if (F > 0)
      for (int i = 0; i < layers; ++i) blocks_.push_back(dyn::ConvBlock::make(F, F, 1, kernel, true, dropout, po, bo));
    params_ = po;
    buffers_ = bo;
  }
  int in_channels() const { return F_; }
  int layers() const { return layers_; }
  int kernel() const { return kernel_; }
  std::size_t param_count() const { return params_; }
  std::size_t buffer_count() const { return buffers_; }
  void init(Rng& rng, float* p, float* b) const {
    for (const auto& blk : blocks_) blk.init(rng, p, b);
  }
  Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t bo) const {
    // Shift this network's parameter views to where the model placed them.
    Context shifted = ctx;
    shifted.params = ctx.params.slice(0, std::int64_t(po), std::int64_t(params_));
    if (ctx.grads.defined()) shifted.grads = ctx.grads.slice(0, std::int64_t(po), std::int64_t(params_));
    shifted.buffers = ctx.buffers.slice(0, std::int64_t(bo), std::int64_t(buffers_));
    Var h = x;
    for (const auto& blk : blocks_) h = blk.forward(shifted, h);
    return h;
  }
  void slots(const std::string& prefix, std::size_t po, std::size_t bo, std::vector<TensorSlot>& ps,
             std::vector<TensorSlot>& bs) const {
    std::vector<TensorSlot> p, b;
    for (std::size_t i = 0; i < blocks_.size(); ++i) blocks_[i].slots(prefix + ".layer" + std::to_string(i + 1), p, b);
    for (auto& s : p) s.offset += po, ps.push_back(s);
    for (auto& s : b) s.offset += bo, bs.push_back(s);
  }
  std::int64_t receptive_field_on_coarse_grid() const { return 1 + std::int64_t(layers_) * (kernel_ - 1); }

 private:
  int F_, layers_, kernel_;
  std::vector<dyn::ConvBlock> blocks_;
  std::size_t params_ = 0, buffers_ = 0;
};

}  // namespace dd
