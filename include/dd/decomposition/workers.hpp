#pragma once
// CpuWorkers: the pool of CPU "devices" clones run on. Clone k always runs on worker k % count,
// and each task is independent, so results never depend on scheduling. Kernels called inside a
// worker run single-threaded (they see the parallel region), so cores are not oversubscribed.
#include <functional>

#include "dd/autograd/tape.hpp"
#include "dd/core/parallel.hpp"

namespace dd {

class CpuWorkers {
 public:
  explicit CpuWorkers(int count = 0) : count_(count > 0 ? count : num_threads()) {}
  int count() const { return count_; }

  // Runs task(k) for k in [0, n); grad mode is carried over to the workers.
  void run(std::int64_t n, const std::function<void(std::int64_t)>& task) const {
    const bool grad = GradMode::enabled();
    if (count_ <= 1 || n <= 1) {
      for (std::int64_t k = 0; k < n; ++k) task(k);
      return;
    }
#pragma omp parallel for num_threads(count_) schedule(static, 1)
    for (std::int64_t k = 0; k < n; ++k) {
      GradMode::set(grad);
      task(k);
    }
  }

 private:
  int count_;
};

}  // namespace dd
