#pragma once
// DomainDecomposed<Net, Comm>: the DDU-Net. An image batch is cut into a grid of subimages; one
// clone of Net per subimage (all clones share ONE parameter set) encodes its tile, the bottlenecks
// meet in the exchange, and each clone decodes its own tile; the logits are stitched back.
//
// Clones run concurrently, each recording on its own tape: on the CPU worker pool, or on the GPU
// one CUDA stream per clone (the streams fork from and join the caller's stream around each phase,
// which also keeps the caching allocator's per-stream reuse safe), or spread over the ranks of a
// process group (distribute(), forward_tiles()). Gradients of the
// shared weights accumulate into one buffer per worker thread (a clone always runs on the same
// thread, forward and backward, so no buffer is shared between threads), summed in thread order
// afterwards: deterministic for a given worker count, and memory grows with the workers, not
// with the grid. The caller's tape gets two entries that replay the clone tapes, so
// loss.backward() runs decoders, exchange and encoders in the right order.
#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "dd/autograd/liveness.hpp"
#include "dd/decomposition/distribution.hpp"
#include "dd/decomposition/exchange.hpp"
#include "dd/decomposition/workers.hpp"
#include "dd/models/comm_net.hpp"
#include "dd/models/model_state.hpp"
#include "dd/models/unet.hpp"
#if DD_WITH_CUDA
#include "dd/backend/cuda/runtime.hpp"
#endif

namespace dd {

// How inference without gradients (eval mode, no tape) runs the clones of one process. Batch norm
// then uses the running statistics and dropout is off, so a tile's logits do not depend on whether
// its clone runs alone or stacked with the others on the batch dimension.
//   per_clone: one pass per clone (CPU workers, or one CUDA stream per clone);
//   stacked:   the subimages stacked on the batch dimension, one pass per subimage shape (one kernel
//              per layer for all equal tiles: what a single GPU wants; PyTorch's DDU-Net reference
//              does the same), split where a stack would exceed set_eval_stack_limit; when no two
//              subimages are equal, per clone;
//   automatic: stacked on the GPU, per clone on the CPU (its kernels already split every image).
// Training and recorded passes always run per clone (each clone normalises with its own statistics).
enum class EvalTiles { automatic, per_clone, stacked };

// Receptive-field map of the bottleneck in a DDU-Net: the communication network acts alongside the
// channels that bypass it.
template <class Comm>
struct CommBottleneck {
  static constexpr Interval depends(Interval o) { return hull(o, Comm::depends(o)); }
};

namespace detail {
// Compile-time facts of a DDU-Net whose networks are typed; dynamic ones have only the run-time
// accessors of DomainDecomposed.
template <class Net, class Comm, bool = is_typed_network<Net> && is_typed_network<Comm>>
struct TypedDDUFacts {};
template <class Net, class Comm>
struct TypedDDUFacts<Net, Comm, true> {
  static constexpr int F = Comm::in_channels;
  static_assert(F == 0 || Comm::out_channels == F, "dd::DomainDecomposed: the communication network must map F "
                                                   "channels to F channels");
  static_assert(F <= Net::bottleneck_channels,
                "dd::DomainDecomposed: F (communicated maps) exceeds the bottleneck's channel count");
  static constexpr std::size_t net_param_count = Net::param_count, net_buffer_count = Net::buffer_count;
  static constexpr std::size_t param_count = Net::param_count + Comm::param_count;
  static constexpr std::size_t buffer_count = Net::buffer_count + Comm::buffer_count;
  // Receptive field on one unbounded subimage (paper Table 4).
  static constexpr Interval depends(Interval o) { return Net::template depends_with<CommBottleneck<Comm>>(o); }
  static void check_input(const Shape& s) { Net::check_input(s); }
};
}  // namespace detail

template <class Net, class Comm = NoComm>
class DomainDecomposed : public detail::TypedDDUFacts<Net, Comm>, public ModelState {
 public:
  using Network = Net;
  using Communication = Comm;

  // Weights of the clones are initialised exactly as Model<Net>(seed) initialises them.
  DomainDecomposed(GridSpec grid, Exchange mode, std::uint64_t seed = 0, CpuWorkers workers = CpuWorkers{})
    requires std::is_default_constructible_v<Net> && std::is_default_constructible_v<Comm>
      : DomainDecomposed(Net{}, Comm{}, grid, mode, seed, workers) {}

  DomainDecomposed(Net net, Comm comm, GridSpec grid, Exchange mode, std::uint64_t seed = 0,
                   CpuWorkers workers = CpuWorkers{})
      : ModelState(params_of(net) + params_of(comm), buffers_of(net) + buffers_of(comm), seed),
        net_(std::move(net)),
        comm_(std::move(comm)),
        net_params_(params_of(net_)),
        net_buffers_(buffers_of(net_)),
        grid_(grid),
        mode_(mode),
        workers_(workers) {
    DD_CHECK(comm_channels(comm_) <= bottleneck_channels(),
             "dd::DomainDecomposed: F = {} communicated maps exceed the {} bottleneck channels", comm_channels(comm_),
             bottleneck_channels());
    Rng init_rng(seed);
    net_.init(init_rng, params_.data(), buffers_.data());
    comm_.init(init_rng, params_.data() + net_params_, buffers_.data() + net_buffers_);
  }

  const Net& network() const { return net_; }
  const Comm& communication() const { return comm_; }
  std::size_t num_params() const { return static_cast<std::size_t>(params_.numel()); }
  std::size_t num_net_params() const { return net_params_; }
  std::size_t num_net_buffers() const { return net_buffers_; }
  std::int64_t downsampling() const {
    if constexpr (requires { Net::downsampling + 0; }) return Net::downsampling;
    else return net_.downsampling();
  }
  int bottleneck_channels() const {
    if constexpr (requires { Net::bottleneck_channels + 0; }) return Net::bottleneck_channels;
    else return net_.bottleneck_channels();
  }

  // The grid may change between calls (train on one grid, evaluate on another).
  void set_grid(GridSpec g) { grid_ = g; }
  GridSpec grid() const { return grid_; }
  Exchange mode() const { return mode_; }
  const CpuWorkers& workers() const { return workers_; }
  void set_eval_tiles(EvalTiles e) { eval_tiles_ = e; }
  EvalTiles eval_tiles() const { return eval_tiles_; }
  // The most values one stacked activation may hold (default 2^31 - 1, what cuDNN's legacy API
  // indexes): a stack that would exceed it is split into several passes.
  void set_eval_stack_limit(std::int64_t values) {
    DD_CHECK(values > 0, "dd::DomainDecomposed::set_eval_stack_limit: {} values is not a limit", values);
    eval_stack_limit_ = values;
  }
  // Whether a pass without gradients over an image of this shape, in the current mode, runs this
  // process's clones stacked (see EvalTiles).
  bool stacks_eval(const Shape& image) const {
    const Grid g = grid_for(image);
    std::vector<Shape> shapes;
    for (const std::int64_t k : local_clones(g.count()))
      shapes.push_back({image.n, image.c, g.heights()[std::size_t(k / g.cols())], g.widths()[std::size_t(k % g.cols())]});
    return stacks(shapes, false);
  }

  // Spreads the clones over the ranks of a process group (nullptr: all in this process). Each
  // rank then calls forward_tiles with its own subimages.
  void distribute(std::shared_ptr<Distribution> d) { dist_ = std::move(d); }
  const std::shared_ptr<Distribution>& distribution() const { return dist_; }
  // The clones (row-major grid indices) this process runs for a grid of K subimages.
  std::vector<std::int64_t> local_clones(std::int64_t K) const {
    if (dist_ && dist_->size() > 1) return dist_->local_clones(K);
    std::vector<std::int64_t> all(static_cast<std::size_t>(K));
    for (std::int64_t k = 0; k < K; ++k) all[static_cast<std::size_t>(k)] = k;
    return all;
  }
  // The grid this model cuts an image of the given size into.
  Grid grid_for(const Shape& image) const { return Grid::split(image.h, image.w, grid_, downsampling()); }

  Var forward(const Var& x) {
    DD_CHECK(!dist_ || dist_->size() == 1, "dd::DomainDecomposed: the model is spread over {} ranks; each rank calls "
             "forward_tiles with its own subimages", dist_ ? dist_->size() : 1);
    const Shape s = x.shape();
    net_.check_input(s);
    const Grid g = grid_for(s);
    const std::vector<Var> tiles = g.count() == 1 ? std::vector<Var>{x} : cut(x, g);
    std::vector<Var> logits = run(g, local_clones(g.count()), tiles);
    return g.count() == 1 ? logits[0] : stitch(logits, g);
  }
  Var operator()(const Var& x) { return forward(x); }

  // This rank's part of a forward pass over an image of shape `image`: tiles are the subimages of
  // local_clones(K), in that order; returns their logits in the same order. Under a distribution
  // every rank must call it (the bottleneck exchange and the gradient sum are collective).
  std::vector<Var> forward_tiles(const Shape& image, const std::vector<Var>& tiles) {
    net_.check_input(image);
    const Grid g = grid_for(image);
    const std::vector<std::int64_t> local = local_clones(g.count());
    DD_CHECK(tiles.size() == local.size(), "dd::DomainDecomposed::forward_tiles: {} subimages given, this rank runs {}",
             tiles.size(), local.size());
    for (std::size_t i = 0; i < local.size(); ++i) {
      const std::int64_t k = local[i];
      const Shape want{image.n, image.c, g.heights()[std::size_t(k / g.cols())], g.widths()[std::size_t(k % g.cols())]};
      DD_CHECK(tiles[i].shape() == want, "dd::DomainDecomposed::forward_tiles: subimage {} has shape {}, the {} grid of "
               "a {}x{} image needs {}", k, tiles[i].shape(), g.str(), image.h, image.w, want);
    }
    return run(g, local, tiles);
  }

 private:
  bool on_gpu() const { return params_.device() == Device::cuda; }
  bool distributed() const { return dist_ && dist_->size() > 1; }

  // Encode, exchange, decode for the clones in `local` (global grid indices) on their subimages.
  std::vector<Var> run(const Grid& g, const std::vector<std::int64_t>& local, const std::vector<Var>& tiles) {
    const Grid coarse = g.coarsened(downsampling());
    const std::int64_t K = g.count(), L = static_cast<std::int64_t>(local.size());
    const bool record = GradMode::enabled();
    prepare_clones(K, L, record);
    std::vector<Shape> shapes;
    for (const Var& t : tiles) shapes.push_back(t.shape());
    if (stacks(shapes, record)) return run_stacked(coarse, local, K, tiles);

    auto enc_tapes = std::make_shared<std::vector<Tape>>(static_cast<std::size_t>(L));
    auto dec_tapes = std::make_shared<std::vector<Tape>>(static_cast<std::size_t>(L));
    std::vector<UNetFeatures> features(static_cast<std::size_t>(L));

    run_clones(L, [&](std::int64_t i) {
      TapeScope scope((*enc_tapes)[static_cast<std::size_t>(i)]);
      Context ctx = clone_context(i, local[static_cast<std::size_t>(i)], record);
      features[static_cast<std::size_t>(i)] = net_.encode(ctx, tiles[static_cast<std::size_t>(i)]);
    });
    if (record)  // replayed last: the encoders' backward, then the clone gradients are summed
      Tape::current().record([this, alive = alive_.watch(), enc_tapes, L] {
        alive.require("dd::DomainDecomposed");
        run_clones(L, [&](std::int64_t i) { (*enc_tapes)[static_cast<std::size_t>(i)].backward(); });
        reduce_clone_gradients();
      });

    std::vector<Var> bottlenecks;
    for (const auto& f : features) bottlenecks.push_back(f.bottleneck);
    Context main = main_context(record);
    TileGroup group{dist_.get(), local, K};
    const std::vector<Var> exchanged = exchange_bottlenecks(main, comm_, bottlenecks, coarse, mode_, net_params_,
                                                            net_buffers_, distributed() ? &group : nullptr);
    for (std::int64_t i = 0; i < L; ++i) features[static_cast<std::size_t>(i)].bottleneck = exchanged[static_cast<std::size_t>(i)];

    std::vector<Var> logits(static_cast<std::size_t>(L));
    run_clones(L, [&](std::int64_t i) {
      TapeScope scope((*dec_tapes)[static_cast<std::size_t>(i)]);
      Context ctx = clone_context(i, local[static_cast<std::size_t>(i)], record);
      logits[static_cast<std::size_t>(i)] = net_.decode(ctx, features[static_cast<std::size_t>(i)]);
    });
    if (record)
      Tape::current().record([this, alive = alive_.watch(), dec_tapes, L] {
        alive.require("dd::DomainDecomposed");
        run_clones(L, [&](std::int64_t i) { (*dec_tapes)[static_cast<std::size_t>(i)].backward(); });
      });
    merge_clone_buffers(K);
    return logits;
  }

  // Whether this pass stacks the local clones' subimages (see EvalTiles): in eval without gradients,
  // when at least two subimages have the same shape.
  bool stacks(const std::vector<Shape>& tiles, bool record) const {
    if (record || training_ || tiles.size() < 2) return false;
    if (eval_tiles_ == EvalTiles::per_clone || (eval_tiles_ == EvalTiles::automatic && !on_gpu())) return false;
    for (std::size_t i = 0; i < tiles.size(); ++i)
      for (std::size_t j = i + 1; j < tiles.size(); ++j)
        if (tiles[i] == tiles[j]) return true;
    return false;  // all different: per clone (on their own streams)
  }
  // The local clones' subimages stacked on the batch dimension, one stack per shape (a grid whose
  // last row or column is narrower has up to four): one encoder pass per stack, the bottlenecks cut
  // apart for the exchange (it needs them per subimage) and stacked again for one decoder pass per
  // stack. C = N on one process needs no cutting: one communication pass over all stacks' maps each.
  std::vector<Var> run_stacked(const Grid& coarse, const std::vector<std::int64_t>& local, std::int64_t K,
                               const std::vector<Var>& tiles) {
    const auto L = tiles.size();
    std::vector<std::vector<std::size_t>> stacks;  // indices of equal subimages, in grid order
    for (std::size_t i = 0; i < L; ++i) {
      const Shape& s = tiles[i].shape();
      // Values of the widest activation of this subimage; a stack holds as many as the limit allows.
      const std::int64_t per_tile = s.n * widest_per_pixel() * s.h * s.w;
      const auto most = static_cast<std::size_t>(std::max<std::int64_t>(1, eval_stack_limit_ / per_tile));
      auto same = std::find_if(stacks.begin(), stacks.end(), [&](const auto& st) {
        return tiles[st[0]].shape() == s && st.size() < most;
      });
      if (same == stacks.end()) stacks.push_back({i});
      else same->push_back(i);
    }
    const auto stack_of = [](const std::vector<Var>& v, const std::vector<std::size_t>& st) {
      if (st.size() == 1) return v[st[0]];
      std::vector<Var> parts;
      for (const std::size_t i : st) parts.push_back(v[i]);
      return concat(parts, 0);
    };
    Context ctx = main_context(false);
    std::vector<UNetFeatures> features;
    for (const auto& st : stacks) features.push_back(net_.encode(ctx, stack_of(tiles, st)));
    if (mode_ == Exchange::local && !distributed()) {
      for (UNetFeatures& f : features)
        f.bottleneck = exchange_bottlenecks(ctx, comm_, {f.bottleneck}, coarse, mode_, net_params_, net_buffers_)[0];
    } else {
      std::vector<Var> bottlenecks(L);
      for (std::size_t g = 0; g < stacks.size(); ++g) {
        const std::int64_t n = tiles[stacks[g][0]].shape().n;
        for (std::size_t j = 0; j < stacks[g].size(); ++j)
          bottlenecks[stacks[g][j]] = slice(features[g].bottleneck, 0, std::int64_t(j) * n, n);
      }
      TileGroup group{dist_.get(), local, K};
      const std::vector<Var> exchanged = exchange_bottlenecks(ctx, comm_, bottlenecks, coarse, mode_, net_params_,
                                                              net_buffers_, distributed() ? &group : nullptr);
      for (std::size_t g = 0; g < stacks.size(); ++g) features[g].bottleneck = stack_of(exchanged, stacks[g]);
    }
    std::vector<Var> logits(L);
    for (std::size_t g = 0; g < stacks.size(); ++g) {
      const Var y = net_.decode(ctx, features[g]);
      const std::int64_t n = tiles[stacks[g][0]].shape().n;
      for (std::size_t j = 0; j < stacks[g].size(); ++j)
        logits[stacks[g][j]] = stacks[g].size() == 1 ? y : slice(y, 0, std::int64_t(j) * n, n);
    }
    return logits;
  }

  // Values per pixel of a subimage's widest activation: the first level's concatenation (twice the
  // base channels at full resolution), or the input, or the logits (deeper levels hold fewer).
  std::int64_t widest_per_pixel() const {
    if constexpr (requires { Net::channels(0) + Net::in_channels + Net::classes; })
      return std::max({2 * std::int64_t(Net::channels(0)), std::int64_t(Net::in_channels), std::int64_t(Net::classes)});
    else
      return std::max({2 * std::int64_t(net_.ch(0)), std::int64_t(net_.in_channels()), std::int64_t(net_.classes())});
  }

  // Runs task(i) for every local clone i: on the CPU workers, or on the GPU with clone i's work
  // enqueued on stream i, forked from and joined back into the caller's stream (also when a task
  // throws: the caller's stream must not run ahead of clone work still using its memory).
  void run_clones(std::int64_t n, const std::function<void(std::int64_t)>& task) {
    if (!on_gpu()) {
      workers_.run(n, task);
      return;
    }
#if DD_WITH_CUDA
    if (n == 1) {
      task(0);
      return;
    }
    cuda::StreamFork fork;
    for (std::int64_t k = 0; k < n; ++k) {
      cuda::StreamScope scope(fork.fork(static_cast<std::size_t>(k)));
      task(k);
    }
    fork.join();
#else
    detail::no_cuda();
#endif
  }

  // Gradient buffers per worker (per clone on the GPU), BN statistics and dropout streams per local
  // clone. A grid of one subimage uses the model's own (so a 1x1 grid is exactly the plain network).
  void prepare_clones(std::int64_t K, std::int64_t L, bool record) {
    clones_ = K;
    clone_rngs_.clear();
    if (K == 1) return;
    per_clone_lanes_ = per_clone_lanes(L);
    const auto lanes = per_clone_lanes_ ? static_cast<std::size_t>(L) : static_cast<std::size_t>(std::max(1, workers_.count()));
    if (record && (lane_grads_.size() != lanes || lane_grads_[0].device() != grads_.device())) {
      lane_grads_.clear();
      for (std::size_t k = 0; k < lanes; ++k) lane_grads_.push_back(Tensor::zeros(grads_.shape(), grads_.device()));
    }
    if (training_) {
      clone_buffers_.resize(static_cast<std::size_t>(L));
      for (auto& b : clone_buffers_) b = buffers_.clone();
      // Clone k's dropout stream depends on k alone, so every rank draws the same masks for it.
      const std::uint64_t base = dropout_rng_.next();
      for (std::int64_t k = 0; k < K; ++k) clone_rngs_.emplace_back(base + 0x9E3779B97F4A7C15ull * std::uint64_t(k + 1));
    }
  }
  // Local clone i (global grid index k).
  Context clone_context(std::int64_t i, std::int64_t k, bool record) {
    if (clones_ == 1) return main_context(record);
    // The calling worker's gradient buffer: clone i runs on the same thread in every phase.
    const auto lane = per_clone_lanes_ ? static_cast<std::size_t>(i) : static_cast<std::size_t>(omp_get_thread_num());
    DD_CHECK(!record || lane < lane_grads_.size(), "dd::DomainDecomposed: worker thread {} outside the pool of {}",
             lane, lane_grads_.size());
    // In eval the statistics are only read and dropout is off, so clones share the model's.
    return Context{params_, record ? lane_grads_[lane] : Tensor{},
                   training_ ? clone_buffers_[static_cast<std::size_t>(i)] : buffers_, training_,
                   training_ ? &clone_rngs_[static_cast<std::size_t>(k)] : &dropout_rng_};
  }
  Context main_context(bool record) {
    return Context{params_, record ? grads_ : Tensor{}, buffers_, training_, &dropout_rng_};
  }
  // One gradient buffer per clone (then the sum is in clone order: the same bits for any worker
  // count, and for any number of ranks) unless that would take more than 512 MiB; then one per
  // worker (memory grows with the workers, not the grid; the bits depend on the worker count).
  // The GPU and a distributed model always keep one per local clone.
  bool per_clone_lanes(std::int64_t L) const {
    return on_gpu() || distributed() || L * static_cast<std::int64_t>(net_params_) * 4 <= (std::int64_t{512} << 20);
  }

  // Shared weights: the true gradient is the sum over clones, accumulated from zero in clone order
  // (per-clone buffers; in worker order with per-worker ones), then added to the gradients. A
  // distributed model passes the running sum along the ranks (Distribution::chain_sum), so it gets
  // one process's bits; with direct collectives (NCCL) each rank sums its own clones and the ranks
  // all-reduce that on the device. The communication network ran on every rank alike and needs no sum.
  void reduce_clone_gradients() {
    if (clones_ == 1 || lane_grads_.empty()) return;
    const auto n = static_cast<std::int64_t>(net_params_);
    const Tensor g = grads_.slice(0, 0, n);
    auto add_lanes = [&](const Tensor& running) {
      for (auto& cg : lane_grads_) running.add_(cg.slice(0, 0, n).to(running.device()));
    };
    if (!distributed() || dist_->direct_collectives()) {
      const Tensor running = Tensor::zeros(g.shape(), g.device());
      add_lanes(running);
      if (distributed()) dist_->all_reduce_sum_direct(running.data(), n);  // on the gradients' device
      g.add_(running);
    } else {
      const Tensor running = Tensor::empty(g.shape());  // on the host: it travels between the ranks
      dist_->chain_sum(running.data(), n, [&](float*) { add_lanes(running); });
      g.add_(running.to(g.device()));
    }
    for (auto& cg : lane_grads_) cg.slice(0, 0, n).fill(0.0f);
  }
  // Running statistics: each clone moved its own copy; the model keeps their mean over all K clones.
  void merge_clone_buffers(std::int64_t K) {
    if (K == 1 || !training_) return;
    const std::int64_t n = static_cast<std::int64_t>(net_buffers_);
    if (distributed()) {  // every clone's copy, gathered, and the one-process mean in clone order
      std::vector<float> mine;
      for (const auto& cb : clone_buffers_) {
        const std::vector<float> v = cb.slice(0, 0, n).to_vector();
        mine.insert(mine.end(), v.begin(), v.end());
      }
      std::vector<std::int64_t> counts;
      const std::vector<float> all = dist_->all_gather(mine.data(), std::int64_t(mine.size()), counts);
      DD_CHECK(std::int64_t(all.size()) == K * n, "dd::DomainDecomposed: the ranks sent {} statistics, {} clones "
               "hold {}", all.size(), K, K * n);
      Tensor mean = Tensor::empty({n, 1, 1, 1});
      for (std::int64_t i = 0; i < n; ++i) {
        double s = 0;
        for (std::int64_t k = 0; k < K; ++k) s += all[std::size_t(k * n + i)];
        mean.data()[i] = static_cast<float>(s / static_cast<double>(K));
      }
      buffers_.slice(0, 0, n).copy_from(mean);
      return;
    }
    if (on_gpu()) {  // float sums on the device
      const Tensor b = buffers_.slice(0, 0, n);
      b.fill(0.0f);
      for (const auto& cb : clone_buffers_) b.add_(cb.slice(0, 0, n));
      b.scale_(1.0f / static_cast<float>(K));
      return;
    }
    for (std::int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (const auto& b : clone_buffers_) s += b.data()[i];
      buffers_.data()[i] = static_cast<float>(s / static_cast<double>(K));
    }
  }

  Net net_;
  Comm comm_;
  std::size_t net_params_, net_buffers_;
  GridSpec grid_;
  Exchange mode_;
  CpuWorkers workers_;
  std::vector<Tensor> lane_grads_, clone_buffers_;
  std::vector<Rng> clone_rngs_;
  std::int64_t clones_ = 1;
  bool per_clone_lanes_ = false;
  EvalTiles eval_tiles_ = EvalTiles::automatic;
  std::int64_t eval_stack_limit_ = std::numeric_limits<int>::max();
  std::shared_ptr<Distribution> dist_;
  Liveness alive_;  // checked by the closures this object records (they capture `this`)
};

}  // namespace dd
