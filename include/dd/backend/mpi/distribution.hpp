#pragma once
// DomainDecomposed over MPI ranks: the Distribution (decomposition/distribution.hpp) backed by an
// MPI communicator. Usage, on every rank:
//   dd::mpi::Environment env(argc, argv);
//   model.distribute(std::make_shared<dd::mpi::MpiDistribution>(dd::mpi::Communicator::world()));
//   auto logits = model.forward_tiles(image_shape, my_tiles);          // my_tiles: local_clones(K)
//   auto loss = dd::dice_loss(logits, my_labels, dd::mpi::sum_over(*dist));
// Exchange choice: the F-channel bottleneck tiles are ALL-GATHERED and every rank runs the (small)
// communication network on the whole coarse map, instead of gathering to one owner and scattering
// back. Both move the same bytes per rank (each rank's tiles out, all tiles in, versus tiles out
// and its results back), but the all-gather is one collective instead of two dependent ones, keeps
// every rank busy instead of idle while the owner computes, and gives the communication network's
// parameter gradient on every rank without a reduction. Measured in bench/bench_mpi.cpp.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "dd/backend/mpi/communicator.hpp"
#include "dd/decomposition/distribution.hpp"
#include "dd/ops/dice_loss.hpp"

namespace dd::mpi {

class MpiDistribution : public Distribution {
 public:
  explicit MpiDistribution(Communicator& comm) : comm_(&comm) {}
  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  std::vector<float> all_gather(const float* local, std::int64_t n, std::vector<std::int64_t>& counts) override {
    return comm_->all_gather_v(local, n, counts);
  }
  std::vector<double> all_gather(const double* local, std::int64_t n) override {
    // Doubles travel as pairs of floats' bits (the communicator gathers floats).
    std::vector<float> bits(static_cast<std::size_t>(2 * n));
    std::memcpy(bits.data(), local, static_cast<std::size_t>(n) * sizeof(double));
    std::vector<std::int64_t> counts;
    const std::vector<float> all = comm_->all_gather_v(bits.data(), 2 * n, counts);
    std::vector<double> out(all.size() / 2);
    std::memcpy(out.data(), all.data(), out.size() * sizeof(double));
    return out;
  }
  void chain_sum(float* running, std::int64_t n, const std::function<void(float*)>& add_mine) override {
    const int r = rank(), p = size();
    const auto t0 = std::chrono::steady_clock::now();
    std::int64_t sent = 0;
    for (std::int64_t off = 0; off < n; off += chunk) {  // MPI counts are int
      const int c = static_cast<int>(std::min<std::int64_t>(chunk, n - off));
      if (r > 0) {
        DD_MPI_CHECK(MPI_Recv(running + off, c, MPI_FLOAT, r - 1, 7, comm_->get(), MPI_STATUS_IGNORE));
      } else {
        std::fill_n(running + off, c, 0.0f);
      }
    }
    add_mine(running);
    for (std::int64_t off = 0; off < n; off += chunk) {
      const int c = static_cast<int>(std::min<std::int64_t>(chunk, n - off));
      if (r + 1 < p) {
        DD_MPI_CHECK(MPI_Send(running + off, c, MPI_FLOAT, r + 1, 7, comm_->get()));
        sent += c;
      }
      DD_MPI_CHECK(MPI_Bcast(running + off, c, MPI_FLOAT, p - 1, comm_->get()));
    }
    chain_bytes_ += sent * std::int64_t(sizeof(float)) + (r == p - 1 ? n * std::int64_t(sizeof(float)) : 0);
    chain_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  void all_reduce_sum(float* x, std::int64_t n) override { comm_->all_reduce_sum(x, n); }
  void all_reduce_sum(double* x, std::int64_t n) override { comm_->all_reduce_sum(x, n); }
  Communicator& communicator() const { return *comm_; }
  // What the gradient chain sent and the time spent in it (the communicator counts the rest).
  std::int64_t chain_bytes() const { return chain_bytes_; }
  double chain_seconds() const { return chain_seconds_; }
  void reset_counters() { chain_bytes_ = 0, chain_seconds_ = 0; }

 private:
  static constexpr std::int64_t chunk = std::int64_t{1} << 28;
  Communicator* comm_;
  std::int64_t chain_bytes_ = 0;
  double chain_seconds_ = 0;
};

// The gathering that makes a Dice loss over this rank's subimages the loss of the whole image.
inline DicePieceGather sum_over(MpiDistribution& dist) {
  return gather_pieces(dist);
}

}  // namespace dd::mpi
