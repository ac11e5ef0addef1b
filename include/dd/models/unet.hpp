#pragma once
// UNet<Depth, InChannels, Classes, Base>: the same-padded U-Net of the paper, channels Base * 2^i.
// Parameters are laid out encoder first (input block, Down 1..D), then decoder (Up D-1..0) and
// the 1x1 head, so the DDU-Net can run encoders and decoders as separate phases.
#include <vector>

#include "dd/models/blocks.hpp"

namespace dd {

// Receptive-field map of "nothing happens at the bottleneck".
struct IdentityMap {
  static constexpr Interval depends(Interval o) { return o; }
};

// Encoder outputs kept for the decoder: skips[l] at level l (l < D), and the bottleneck (level D).
struct UNetFeatures {
  std::vector<Var> skips;
  Var bottleneck;
};

template <int Depth, int InChannels, int Classes, int Base = 64, float DropP = 0.1f>
struct UNet {
  static_assert(Depth >= 1 && Depth <= 10, "dd::UNet: Depth (number of down/up blocks) must be in 1..10");
  static_assert(InChannels > 0, "dd::UNet: InChannels must be positive");
  static_assert(Classes > 0, "dd::UNet: Classes must be positive");
  static_assert(Base > 0, "dd::UNet: Base (channels of the first block) must be positive");

  static constexpr int depth = Depth, in_channels = InChannels, out_channels = Classes, classes = Classes;
  static constexpr int downsampling = 1 << Depth;
  static constexpr int channels(int level) { return Base << level; }
  static constexpr int bottleneck_channels = channels(Depth);

  using InBlock = DoubleConv<InChannels, Base, DropP>;
  template <int L>  // produces level L (1..Depth)
  using DownBlock = Down<channels(L - 1), channels(L), DropP>;
  template <int L>  // produces level L (Depth-1..0)
  using UpBlock = Up<channels(L + 1), channels(L), DropP>;
  using Head = Conv<Base, Classes, 1, true>;

 private:
  template <int L>
  static constexpr std::size_t down_offset(bool params) {
    if constexpr (L == 1) return params ? InBlock::param_count : InBlock::buffer_count;
    else
      return down_offset<L - 1>(params) +
             (params ? DownBlock<L - 1>::param_count : DownBlock<L - 1>::buffer_count);
  }
  template <int L>
  static constexpr std::size_t up_offset(bool params) {
    if constexpr (L == Depth - 1)
      return down_offset<Depth>(params) + (params ? DownBlock<Depth>::param_count : DownBlock<Depth>::buffer_count);
    else
      return up_offset<L + 1>(params) + (params ? UpBlock<L + 1>::param_count : UpBlock<L + 1>::buffer_count);
  }

 public:
  static constexpr std::size_t encoder_param_count = up_offset<Depth - 1>(true);
  static constexpr std::size_t head_param_offset = up_offset<0>(true) + UpBlock<0>::param_count;
  static constexpr std::size_t head_buffer_offset = up_offset<0>(false) + UpBlock<0>::buffer_count;
  static constexpr std::size_t param_count = head_param_offset + Head::param_count;
  static constexpr std::size_t buffer_count = head_buffer_offset + Head::buffer_count;
  static constexpr std::size_t decoder_param_count = param_count - encoder_param_count;

  // Input extent that output pixels depend on; Bottleneck maps what happens at the coarsest
  // level (identity for a plain U-Net, the communication network for a DDU-Net).
  template <class Bottleneck = IdentityMap>
  static constexpr Interval depends_with(Interval o) {
    return InBlock::depends(decoder_depends<0, Bottleneck>(Head::depends(o)));
  }
  static constexpr Interval depends(Interval o) { return depends_with<IdentityMap>(o); }

  static void init(Rng& rng, float* p, float* b) {
    InBlock::init(rng, p, b);
    for_levels([&]<int L>() { DownBlock<L>::init(rng, p + down_offset<L>(true), b + down_offset<L>(false)); });
    for_levels([&]<int L>() {
      constexpr int U = Depth - L;  // Up blocks in parameter order: Depth-1 down to 0
      UpBlock<U>::init(rng, p + up_offset<U>(true), b + up_offset<U>(false));
    });
    Head::init(rng, p + head_param_offset, b + head_buffer_offset);
  }

  // Throws a dd::Error that says what is wrong with an input of shape s.
  static void check_input(const Shape& s) {
    DD_CHECK(s.numel() > 0, "dd::UNet: empty input (shape {})", s);
    DD_CHECK(s.c == InChannels, "dd::UNet: input has {} channels but the network was built for {} (input shape {})",
             s.c, InChannels, s);
    DD_CHECK(s.h % downsampling == 0 && s.w % downsampling == 0,
             "dd::UNet: input size {}x{} (HxW) is not divisible by 2^{} = {}: a depth-{} U-Net halves the image {} "
             "times; pad or crop both sides to a multiple of {}",
             s.h, s.w, Depth, downsampling, Depth, Depth, downsampling);
  }

  static UNetFeatures encode(Context& ctx, const Var& x, std::size_t po = 0, std::size_t bo = 0) {
    UNetFeatures f;
    f.skips.reserve(Depth);
    Var h = InBlock::forward(ctx, x, po, bo);
    for_levels([&]<int L>() {
      f.skips.push_back(h);
      h = DownBlock<L>::forward(ctx, h, po + down_offset<L>(true), bo + down_offset<L>(false));
    });
    f.bottleneck = h;
    return f;
  }

  static Var decode(Context& ctx, const UNetFeatures& f, std::size_t po = 0, std::size_t bo = 0) {
    DD_CHECK(f.skips.size() == static_cast<std::size_t>(Depth), "dd::UNet::decode: {} skip tensors for depth {}",
             f.skips.size(), Depth);
    Var h = f.bottleneck;
    for_levels([&]<int L>() {
      constexpr int U = Depth - L;
      h = UpBlock<U>::forward(ctx, h, f.skips[U], po + up_offset<U>(true), bo + up_offset<U>(false));
    });
    return Head::forward(ctx, h, po + head_param_offset, bo + head_buffer_offset);
  }

  static Var forward(Context& ctx, const Var& x, std::size_t po = 0, std::size_t bo = 0) {
    return decode(ctx, encode(ctx, x, po, bo), po, bo);
  }

 private:
  // Calls fn.template operator()<L>() for L = 1..Depth, in order.
  template <class Fn>
  static void for_levels(Fn&& fn) {
    [&]<int... I>(std::integer_sequence<int, I...>) { (fn.template operator()<I + 1>(), ...); }
    (std::make_integer_sequence<int, Depth>{});
  }

  // o: pixels of the decoder output at level L -> pixels of the encoder output at level L.
  template <int L, class Bottleneck>
  static constexpr Interval decoder_depends(Interval o) {
    if constexpr (L == Depth) {
      return Bottleneck::depends(o);
    } else {
      const Interval fused = UpBlock<L>::Fuse::depends(o);  // on [skip, up]
      const Interval coarse = UpBlock<L>::Upsample::depends(fused);
      const Interval below = DownBlock<L + 1>::depends(decoder_depends<L + 1, Bottleneck>(coarse));
      return hull(fused, below);  // the skip sees `fused` directly
    }
  }
};

}  // namespace dd
