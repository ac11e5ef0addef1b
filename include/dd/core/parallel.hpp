#pragma once
// Thread control. Kernels parallelise with OpenMP; Eigen's GEMM uses the same pool and runs
// single-threaded when called from inside a parallel region, so nesting never oversubscribes.
#include <omp.h>

#include <cstdint>

namespace dd {

inline int num_threads() { return omp_get_max_threads(); }
inline void set_num_threads(int n) { omp_set_num_threads(n < 1 ? 1 : n); }
inline bool in_parallel_region() { return omp_in_parallel() != 0; }

// Runs fn(i) for i in [0, n) over the threads with a static schedule (deterministic split).
template <class Fn>
void parallel_for(std::int64_t n, Fn&& fn) {
  if (n <= 1 || in_parallel_region() || num_threads() == 1) {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace dd
