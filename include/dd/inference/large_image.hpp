#pragma once
// Segmenting images larger than memory with a DDU-Net (eval mode, no recording):
//   1. encode the subimages a few at a time (one per worker), keeping only the F bottleneck
//      channels that are communicated;
//   2. run the communication network on the stitched coarse map (or per tile for C = N);
//   3. encode each subimage again, put its communicated channels back, decode it and hand its
//      logits to the sink, which can write the output as it goes.
// Peak memory is a few subimages' activations plus the coarse map, not the image. The result is
// DomainDecomposed::forward's on the whole image: bit for bit on the CPU (the kernels run the same
// way); on the GPU forward stacks the subimages (EvalTiles) and cuDNN may sum in another order for
// a bigger batch, so there it agrees to rounding (the GPU test holds it to 1e-4).
// A model on the GPU runs there: tiles go to the device as they are read, one at a time (the GPU
// is parallel within each tile), and the sink gets host tensors.
#include <functional>

#include "dd/decomposition/domain_decomposed.hpp"

namespace dd {

struct TileRect {
  std::int64_t row, col;  // position in the grid
  std::int64_t y, x, h, w;  // pixels
};

// Returns the input pixels of a rectangle as [1, C, h, w] (on any device).
using TileSource = std::function<Tensor(const TileRect&)>;
// Receives the logits [1, classes, h, w] of a rectangle, on the host; called in row-major grid order.
using TileSink = std::function<void(const TileRect&, const Tensor&)>;

inline std::vector<TileRect> tile_rects(const Grid& g) {
  std::vector<TileRect> r;
  for (std::int64_t i = 0; i < g.rows(); ++i)
    for (std::int64_t j = 0; j < g.cols(); ++j)
      r.push_back({i, j, g.row_offset(i), g.col_offset(j), g.heights()[std::size_t(i)], g.widths()[std::size_t(j)]});
  return r;
}

// Phase 1 (encode, keep F channels, exchange) runs in the constructor; decode_row(i) then runs
// phase 2 for grid row i, so a writer can pull the output band by band.
template <class Net, class Comm>
class TiledPredictor {
 public:
  TiledPredictor(DomainDecomposed<Net, Comm>& model, std::int64_t height, std::int64_t width, TileSource source)
      : model_(model),
        was_training_(model.training()),
        grid_(checked_grid(model, height, width)),
        rects_(tile_rects(grid_)),
        source_(std::move(source)),
        F_(comm_channels(model.communication())),
        C_(model.bottleneck_channels()),
        ctx_{model.parameters(), Tensor{}, model.buffers(), false, nullptr} {
    model_.eval();
    try {
      exchange_phase();
    } catch (...) {
      model_.train(was_training_);  // the destructor does not run when the constructor throws
      throw;
    }
  }
  ~TiledPredictor() { model_.train(was_training_); }
  TiledPredictor(const TiledPredictor&) = delete;
  TiledPredictor& operator=(const TiledPredictor&) = delete;

  const Grid& grid() const { return grid_; }

  // The input checks of forward() (channels come from the source), then the grid.
  static Grid checked_grid(DomainDecomposed<Net, Comm>& m, std::int64_t height, std::int64_t width) {
    DD_CHECK(height > 0 && width > 0, "dd::predict_tiled: empty image {}x{}", height, width);
    DD_CHECK(height % m.downsampling() == 0 && width % m.downsampling() == 0,
             "dd::predict_tiled: image size {}x{} (HxW) is not divisible by {}: the network down-samples by {}; pad "
             "or crop both sides to a multiple of {}",
             height, width, m.downsampling(), m.downsampling(), m.downsampling());
    return Grid::split(height, width, m.grid(), m.downsampling());
  }

  // Decodes the tiles of grid row i (left to right, one per worker at a time) into the sink.
  void decode_row(std::int64_t i, const TileSink& sink) {
    NoGrad no_grad;
    const std::int64_t cols = grid_.cols(), group = tiles_at_once();
    for (std::int64_t j0 = 0; j0 < cols; j0 += group) {
      const std::int64_t n = std::min(group, cols - j0);
      std::vector<Var> logits(static_cast<std::size_t>(n));
      run_tiles(n, [&](std::int64_t t) {
        const std::int64_t k = i * cols + j0 + t;
        UNetFeatures f = encode(k);
        if (F_ > 0) {
          const Var& r = received_[std::size_t(k)];
          f.bottleneck = F_ == C_ ? r : concat({slice(f.bottleneck, 1, 0, C_ - F_), r}, 1);
          received_[std::size_t(k)] = Var{};  // no longer needed
        }
        logits[std::size_t(t)] = model_.network().decode(ctx_, f);
      });
      for (std::int64_t t = 0; t < n; ++t)
        sink(rects_[std::size_t(i * cols + j0 + t)], logits[std::size_t(t)].value().to(Device::cpu));
    }
  }

 private:
  // Phase 1: every tile's encoder, then the bottleneck exchange (its result kept per tile).
  void exchange_phase() {
    NoGrad no_grad;
    if (F_ == 0) return;
    const auto K = static_cast<std::int64_t>(rects_.size());
    std::vector<Var> sent(static_cast<std::size_t>(K));
    const std::int64_t group = tiles_at_once();
    for (std::int64_t k0 = 0; k0 < K; k0 += group)
      run_tiles(std::min(group, K - k0), [&](std::int64_t i) {
        const UNetFeatures f = encode(k0 + i);
        sent[std::size_t(k0 + i)] = F_ == C_ ? f.bottleneck : slice(f.bottleneck, 1, C_ - F_, F_);
      });
    // On F-channel maps the exchange returns exactly what each clone receives.
    received_ = exchange_bottlenecks(ctx_, model_.communication(), sent, grid_.coarsened(model_.downsampling()),
                                     model_.mode(), model_.num_net_params(), model_.num_net_buffers());
  }

  bool on_gpu() const { return model_.device() == Device::cuda; }
  // Tiles in flight: one per CPU worker; one on the GPU.
  std::int64_t tiles_at_once() const { return on_gpu() ? 1 : std::max(1, model_.workers().count()); }
  void run_tiles(std::int64_t n, const std::function<void(std::int64_t)>& task) {
    if (on_gpu()) {
      for (std::int64_t i = 0; i < n; ++i) task(i);
    } else {
      model_.workers().run(n, task);
    }
  }

  UNetFeatures encode(std::int64_t k) {
    const TileRect& r = rects_[std::size_t(k)];
    const Tensor x = source_(r);
    DD_CHECK(x.shape().h == r.h && x.shape().w == r.w, "dd::predict_tiled: the source returned {} for a {}x{} tile",
             x.shape(), r.h, r.w);
    return model_.network().encode(ctx_, Var(x.to(model_.parameters().device())));
  }

  DomainDecomposed<Net, Comm>& model_;
  bool was_training_;
  Grid grid_;
  std::vector<TileRect> rects_;
  TileSource source_;
  std::int64_t F_, C_;
  Context ctx_;
  std::vector<Var> received_;
};

template <class Net, class Comm>
void predict_tiled(DomainDecomposed<Net, Comm>& model, std::int64_t height, std::int64_t width, const TileSource& source,
                   const TileSink& sink) {
  TiledPredictor<Net, Comm> p(model, height, width, source);
  for (std::int64_t i = 0; i < p.grid().rows(); ++i) p.decode_row(i, sink);
}

}  // namespace dd
