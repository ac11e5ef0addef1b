#pragma once
// Distribution: where the clones of a DDU-Net run. By default all in this process; with a
// distribution (the MPI backend, backend/mpi/distribution.hpp) the clones of the grid are spread
// over the ranks of a process group in contiguous blocks of the row-major grid, and the model asks
// the distribution to combine what the ranks computed. Keeping this an interface keeps MPI out of
// every header but the backend's.
#include <cstdint>
#include <functional>
#include <vector>

#include "dd/core/error.hpp"

namespace dd {

class Distribution {
 public:
  virtual ~Distribution() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every rank's values concatenated in rank order; counts receives each rank's count.
  virtual std::vector<float> all_gather(const float* local, std::int64_t n, std::vector<std::int64_t>& counts) = 0;
  virtual std::vector<double> all_gather(const double* local, std::int64_t n) = 0;
  // In-place sums over the ranks; every rank gets bit-identical results.
  virtual void all_reduce_sum(float* x, std::int64_t n) = 0;
  virtual void all_reduce_sum(double* x, std::int64_t n) = 0;
  // A running sum passed along the ranks in order: rank r receives it from r - 1 (rank 0 starts
  // from zeros), add_mine adds this rank's terms to it, and the last rank's result reaches every
  // rank. The sum is then exactly the sequential sum in rank order, the order one process uses,
  // so a distributed model gets the single process's gradients bit for bit.
  virtual void chain_sum(float* running, std::int64_t n, const std::function<void(float*)>& add_mine) = 0;

  // Direct collectives, on the tensors' own memory (GPU memory: NCCL, backend/mpi/nccl_distribution.hpp)
  // instead of host buffers. A distribution that has them says so, and the model then runs the
  // bottleneck exchange and the shared-weight gradient sum through them, on the current stream:
  //   all_gather_direct: every rank sends n values (equal counts: pad), `all` gets size() * n in
  //     rank order;
  //   all_reduce_sum_direct: in-place sum, the same values on every rank, but in the library's
  //     order (not chain_sum's one-process bits).
  virtual bool direct_collectives() const { return false; }
  virtual void all_gather_direct(const float* /*local*/, std::int64_t /*n*/, float* /*all*/) {
    fail("dd::Distribution: this distribution has no direct collectives");
  }
  virtual void all_reduce_sum_direct(float* /*x*/, std::int64_t /*n*/) {
    fail("dd::Distribution: this distribution has no direct collectives");
  }

  // The clones rank r runs out of K: [first(r), first(r + 1)).
  std::int64_t first_clone(int r, std::int64_t K) const { return std::int64_t(r) * K / size(); }
  std::vector<std::int64_t> local_clones(std::int64_t K) const {
    DD_CHECK(K >= size(), "dd::Distribution: a grid of {} subimages cannot be spread over {} ranks (each rank needs "
             "at least one subimage)", K, size());
    std::vector<std::int64_t> v;
    for (std::int64_t k = first_clone(rank(), K); k < first_clone(rank() + 1, K); ++k) v.push_back(k);
    return v;
  }
};

// Every rank's values gathered in rank order (for a loss taken over all ranks' pieces: pass to
// dice_loss as its piece gathering).
inline std::function<std::vector<double>(const std::vector<double>&)> gather_pieces(Distribution& d) {
  return [&d](const std::vector<double>& mine) { return d.all_gather(mine.data(), std::int64_t(mine.size())); };
}

}  // namespace dd
