#pragma once
// DomainDecomposed<Net, Comm>: the DDU-Net. An image batch is cut into a grid of subimages; one
// clone of Net per subimage (all clones share ONE parameter set) encodes its tile, the bottlenecks
// meet in the exchange, and each clone decodes its own tile; the logits are stitched back.
//
// Clones run concurrently, each recording on its own tape: on the CPU worker pool, or on the GPU
// one CUDA stream per clone (the streams fork from and join the caller's stream around each phase,
// which also keeps the caching allocator's per-stream reuse safe). Gradients of the
// shared weights accumulate into one buffer per worker thread (a clone always runs on the same
// thread, forward and backward, so no buffer is shared between threads), summed in thread order
// afterwards: deterministic for a given worker count, and memory grows with the workers, not
// with the grid. The caller's tape gets two entries that replay the clone tapes, so
// loss.backward() runs decoders, exchange and encoders in the right order.
#include <memory>
#include <vector>

#include "dd/decomposition/exchange.hpp"
#include "dd/decomposition/workers.hpp"
#include "dd/models/comm_net.hpp"
#include "dd/models/model_state.hpp"
#include "dd/models/unet.hpp"
#if DD_WITH_CUDA
#include "dd/backend/cuda/runtime.hpp"
#endif

namespace dd {

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



  Var forward(const Var& x) {
    const Shape s = x.shape();
    net_.check_input(s);
    const Grid g = Grid::split(s.h, s.w, grid_, downsampling());
    const Grid coarse = g.coarsened(downsampling());
    const std::int64_t K = g.count();
    const bool record = GradMode::enabled();
    prepare_clones(K, record);

    const std::vector<Var> tiles = K == 1 ? std::vector<Var>{x} : cut(x, g);
    auto enc_tapes = std::make_shared<std::vector<Tape>>(static_cast<std::size_t>(K));
    auto dec_tapes = std::make_shared<std::vector<Tape>>(static_cast<std::size_t>(K));
    std::vector<UNetFeatures> features(static_cast<std::size_t>(K));

    run_clones(K, [&](std::int64_t k) {
      TapeScope scope((*enc_tapes)[static_cast<std::size_t>(k)]);
      Context ctx = clone_context(k, record);
      features[static_cast<std::size_t>(k)] = net_.encode(ctx, tiles[static_cast<std::size_t>(k)]);
    });
    if (record)  // replayed last: the encoders' backward, then the clone gradients are summed
      Tape::current().record([this, enc_tapes, K] {
        run_clones(K, [&](std::int64_t k) { (*enc_tapes)[static_cast<std::size_t>(k)].backward(); });
        reduce_clone_gradients(K);
      });

    std::vector<Var> bottlenecks;
    for (const auto& f : features) bottlenecks.push_back(f.bottleneck);
    Context main = main_context(record);
    const std::vector<Var> exchanged =
        exchange_bottlenecks(main, comm_, bottlenecks, coarse, mode_, net_params_, net_buffers_);
    for (std::int64_t k = 0; k < K; ++k) features[static_cast<std::size_t>(k)].bottleneck = exchanged[static_cast<std::size_t>(k)];

    std::vector<Var> logits(static_cast<std::size_t>(K));
    run_clones(K, [&](std::int64_t k) {
      TapeScope scope((*dec_tapes)[static_cast<std::size_t>(k)]);
      Context ctx = clone_context(k, record);
      logits[static_cast<std::size_t>(k)] = net_.decode(ctx, features[static_cast<std::size_t>(k)]);
    });
    if (record)
      Tape::current().record([this, dec_tapes, K] {
        run_clones(K, [&](std::int64_t k) { (*dec_tapes)[static_cast<std::size_t>(k)].backward(); });
      });
    merge_clone_buffers(K);
    return K == 1 ? logits[0] : stitch(logits, g);
  }
  Var operator()(const Var& x) { return forward(x); }

 private:
  bool on_gpu() const { return params_.device() == Device::cuda; }

  // Runs task(k) for every clone: on the CPU workers, or on the GPU with clone k's work enqueued on
  // stream k, forked from and joined back into the caller's stream.
  void run_clones(std::int64_t K, const std::function<void(std::int64_t)>& task) {
    if (!on_gpu()) {
      workers_.run(K, task);
      return;
    }
#if DD_WITH_CUDA
    if (K == 1) {
      task(0);
      return;
    }
    const cudaStream_t caller = cuda::current_stream();
    for (std::int64_t k = 0; k < K; ++k) {
      const cudaStream_t s = cuda::clone_stream(static_cast<std::size_t>(k));
      cuda::stream_wait(s, caller);
      cuda::StreamScope scope(s);
      task(k);
    }
    for (std::int64_t k = 0; k < K; ++k) cuda::stream_wait(caller, cuda::clone_stream(static_cast<std::size_t>(k)));
#else
    detail::no_cuda();
#endif
  }

  // Per-worker gradient buffers, per-clone BN statistics and dropout streams. One clone uses the
  // model's own (so a 1x1 grid is exactly the plain network).
  void prepare_clones(std::int64_t K, bool record) {
    const auto n = static_cast<std::size_t>(K);
    clones_ = K;
    clone_rngs_.clear();
    if (K == 1) return;
    // On the GPU every clone has its own stream, hence its own gradient buffer.
    const auto lanes = on_gpu() ? n : static_cast<std::size_t>(std::max(1, workers_.count()));
    if (record && (lane_grads_.size() != lanes || lane_grads_[0].device() != grads_.device())) {
      lane_grads_.clear();
      for (std::size_t k = 0; k < lanes; ++k) lane_grads_.push_back(Tensor::zeros(grads_.shape(), grads_.device()));
    }
    if (training_) {
      clone_buffers_.resize(n);
      for (auto& b : clone_buffers_) b = buffers_.clone();
      const std::uint64_t base = dropout_rng_.next();
      for (std::size_t k = 0; k < n; ++k) clone_rngs_.emplace_back(base + 0x9E3779B97F4A7C15ull * (k + 1));
    }
  }
  Context clone_context(std::int64_t k, bool record) {
    if (clones_ == 1) return main_context(record);
    const auto i = static_cast<std::size_t>(k);
    // The calling worker's gradient buffer: clone k runs on the same thread in every phase.
    const auto lane = on_gpu() ? i : static_cast<std::size_t>(omp_get_thread_num());
    DD_CHECK(!record || lane < lane_grads_.size(), "dd::DomainDecomposed: worker thread {} outside the pool of {}",
             lane, lane_grads_.size());
    // In eval the statistics are only read and dropout is off, so clones share the model's.
    return Context{params_, record ? lane_grads_[lane] : Tensor{}, training_ ? clone_buffers_[i] : buffers_, training_,
                   training_ ? &clone_rngs_[i] : &dropout_rng_};
  }
  Context main_context(bool record) {
    return Context{params_, record ? grads_ : Tensor{}, buffers_, training_, &dropout_rng_};
  }
  // Shared weights: the true gradient is the sum over clones, taken in worker order.
  void reduce_clone_gradients(std::int64_t K) {
    if (K == 1) return;
    const auto n = static_cast<std::int64_t>(net_params_);
    const Tensor g = grads_.slice(0, 0, n);
    for (auto& cg : lane_grads_) {
      const Tensor c = cg.slice(0, 0, n);
      g.add_(c);
      c.fill(0.0f);
    }
  }
  // Running statistics: each clone moved its own copy; the model keeps their mean.
  void merge_clone_buffers(std::int64_t K) {
    if (K == 1 || !training_) return;
    const std::int64_t n = static_cast<std::int64_t>(net_buffers_);
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
};

}  // namespace dd
