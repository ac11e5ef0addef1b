#pragma once
// The optimizer's and the loss scaler's small state as plain structs, shared by the host code and
// the GPU kernels that update it in device memory (so that a training step never waits to read it).
// Depends on nothing: src/cuda includes it.
#include <cstdint>

namespace dd {

struct LossScalerOptions {
  float initial_scale = 65536.0f, growth = 2.0f, backoff = 0.5f;
  int growth_interval = 2000;
  float min_scale = 1.0f;
};

// Dynamic loss scaling between steps.
struct LossScaleState {
  float scale = 0.0f;  // the loss's factor
  float gate = 1.0f;   // 1: the last unscaled gradients were finite (the optimizer steps), 0: they overflowed
  std::int32_t clean_steps = 0;
  std::int32_t unused = 0;
  std::int64_t skipped = 0;  // steps skipped so far
};

// Adam's step count and the factors of its latest step (the bias corrections folded into float
// factors as dd::Adam computes them: in double, rounded once).
struct AdamCounter {
  std::int64_t t = 0;
  float step = 0.0f, inv_bc2 = 0.0f;
  std::int32_t skip = 0;  // the latest step was skipped (its gate read 0)
  std::int32_t unused = 0;
};

}  // namespace dd
