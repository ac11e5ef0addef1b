#pragma once
// BatchNorm2d on the GPU through cuDNN (spatial mode: statistics per channel over N, H, W), with
// the CPU kernel's interface and conventions: training normalises with the biased batch variance
// and moves the running variance with the unbiased one; dx written, dgamma/dbeta accumulated.
// Statistics and parameters are fp32 in every precision; x, y, dy, dx are activations of type t (half
// only on our channels-last kernels, own_nhwc; cuDNN's paths take f32). nhwc: x, y, dy, dx
// channels-last. Device pointers; work goes to the current stream.
#include <algorithm>

#include "dd/backend/cuda/convolution.hpp"
#include "dd/kernels/cpu/batchnorm.hpp"

namespace dd::gpu {

namespace detail {

// x as [N, C, 1, H*W] (spatial BN only cares that H*W are the reduced dimensions), NCHW or NHWC, and
// the derived [1, C, 1, 1] descriptor cuDNN wants for gamma, beta and the statistics.
struct BatchNormDescriptors {
  cuda::TensorDescriptor x, param;
  BatchNormDescriptors(const cpu::BatchNormGeometry& g, bool nhwc) : x(CUDNN_DATA_FLOAT, g.n, g.c, 1, g.plane, nhwc) {
    DD_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(param, x, CUDNN_BATCHNORM_SPATIAL));
  }
};

inline double batchnorm_epsilon(float eps) {
  DD_CHECK(eps >= CUDNN_BN_MIN_EPSILON, "dd::gpu::batchnorm: eps = {} is below cuDNN's minimum {}", eps,
           CUDNN_BN_MIN_EPSILON);
  return eps;
}

inline bool batchnorm_empty(const cpu::BatchNormGeometry& g) { return g.c <= 0 || g.count() <= 0; }

// Channels-last batch norm runs on our kernels (cuDNN's legacy NHWC fp32 kernels stride through
// memory channel by channel); beyond 1024 channels it stays with cuDNN.
inline bool own_nhwc(const cpu::BatchNormGeometry& g, bool nhwc) {
  return nhwc && cuda::kernels::channels_last_supported(g.c);
}

// The kernels' form of a tail request (none for null), marked applied.
inline cuda::kernels::ReluTail kernel_tail(const cpu::BatchNormGeometry& g, cpu::BatchNormTail* tail) {
  if (!tail) return {};
  tail->applied = true;
  return {true, tail->scale, g.plane};
}

}  // namespace detail

// Training forward. Writes y, the per-channel batch mean and 1/sqrt(var+eps) (kept for backward),
// and updates running_mean/var in place when both are given.
inline void batchnorm_forward_train(const void* x, const float* gamma, const float* beta,
                                    const cpu::BatchNormGeometry& g, float eps, float momentum, void* y,
                                    float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                                    bool nhwc = false, cpu::BatchNormTail* tail = nullptr, DType t = DType::f32) {
  if (detail::batchnorm_empty(g)) return;
  const double epsilon = detail::batchnorm_epsilon(eps);
  if (detail::own_nhwc(g, nhwc)) {
    DD_CHECK(save_mean && save_invstd, "dd::gpu::batchnorm_forward_train: save_mean and save_invstd are needed");
    const bool running = running_mean && running_var;
    cuda::kernels::batchnorm_nhwc_forward_train(x, gamma, beta, g.count(), g.c, eps, momentum, y, save_mean,
                                                save_invstd, running ? running_mean : nullptr,
                                                running ? running_var : nullptr, detail::kernel_tail(g, tail), t,
                                                cuda::current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  cuda::require_f32(t, "gpu::batchnorm_forward_train");
  const detail::BatchNormDescriptors d(g, nhwc);
  // cuDNN updates both running statistics or neither. With one value per channel the unbiased
  // variance is undefined (the CPU then uses the biased one, 0): update those by hand below.
  const bool running = running_mean && running_var;
  const bool single = g.count() == 1;
  DD_CHECK(!(running && single) || save_mean,
           "dd::gpu::batchnorm_forward_train: save_mean is needed to update the running mean");
  // Parameters and statistics are views into a model's flat buffers: realigned where needed.
  const cuda::AlignedFloats ga(gamma, g.c), be(beta, g.c), sm(save_mean, g.c), si(save_invstd, g.c);
  const cuda::AlignedFloats rm(running && !single ? running_mean : nullptr, g.c),
      rv(running && !single ? running_var : nullptr, g.c);
  const float one = 1.0f, zero = 0.0f;
  DD_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(cuda::cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, &one, &zero,
                                                        d.x, x, d.x, y, d.param, ga.get(), be.get(), double(momentum),
                                                        rm.get(), rv.get(), epsilon, sm.get(), si.get()));
  rm.write_back(), rv.write_back(), sm.write_back(), si.write_back();
  if (running && single) {
    // running_mean = (1 - m) running_mean + m mean; running_var = (1 - m) running_var + m * 0.
    const cudaStream_t s = cuda::current_stream();
    cuda::kernels::scale(running_mean, g.c, 1.0f - momentum, DType::f32, s);
    DD_CUDA_CHECK(cudaGetLastError());
    cuda::kernels::axpy(running_mean, save_mean, g.c, momentum, DType::f32, s);
    DD_CUDA_CHECK(cudaGetLastError());
    cuda::kernels::scale(running_var, g.c, 1.0f - momentum, DType::f32, s);
    DD_CUDA_CHECK(cudaGetLastError());
  }
}

// Evaluation forward with given statistics: y = gamma * (x - mean) / sqrt(var + eps) + beta.
// invstd: 1 / sqrt(var + eps) when the caller has it already (may be null).
inline void batchnorm_forward_eval(const void* x, const float* gamma, const float* beta, const float* mean,
                                   const float* var, const cpu::BatchNormGeometry& g, float eps, void* y,
                                   bool nhwc = false, cpu::BatchNormTail* tail = nullptr,
                                   const float* invstd = nullptr, DType t = DType::f32) {
  if (detail::batchnorm_empty(g)) return;
  const double epsilon = detail::batchnorm_epsilon(eps);
  if (detail::own_nhwc(g, nhwc)) {
    const cudaStream_t s = cuda::current_stream();
    cuda::DeviceScratch computed;
    if (!invstd) {
      computed.reset(static_cast<std::size_t>(g.c) * sizeof(float));
      cuda::kernels::batchnorm_invstd(var, g.c, eps, computed.floats(), s);
      invstd = computed.floats();
    }
    cuda::kernels::batchnorm_nhwc_forward_eval(x, gamma, beta, mean, invstd, g.count(), g.c, y,
                                               detail::kernel_tail(g, tail), t, s);
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  cuda::require_f32(t, "gpu::batchnorm_forward_eval");
  const detail::BatchNormDescriptors d(g, nhwc);
  const cuda::AlignedFloats ga(gamma, g.c), be(beta, g.c), m(mean, g.c), v(var, g.c);
  const float one = 1.0f, zero = 0.0f;
  DD_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(cuda::cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, &one, &zero,
                                                         d.x, x, d.x, y, d.param, ga.get(), be.get(), m.get(), v.get(),
                                                         epsilon));
}

// Backward. mean/invstd are the statistics the forward used (batch ones in training, running ones
// in eval). batch_stats says whether the statistics depend on x (training) or are constants (eval).
// dx is written (may be null); dgamma/dbeta are accumulated (may be null). With a tail (the fused
// op), dy is the gradient of the block's output tail->y, and the tail's backward comes first.
inline void batchnorm_backward(const void* x, const void* dy, const float* gamma, const float* mean,
                               const float* invstd, const cpu::BatchNormGeometry& g, bool batch_stats, void* dx,
                               float* dgamma, float* dbeta, bool nhwc = false,
                               const cpu::BatchNormTail* tail = nullptr, DType t = DType::f32) {
  if (detail::batchnorm_empty(g) || (!dx && !dgamma && !dbeta)) return;
  DD_CHECK(!tail || tail->y, "dd::gpu::batchnorm_backward: a fused tail needs its output (the ReLU mask)");
  const cudaStream_t s = cuda::current_stream();
  if (detail::own_nhwc(g, nhwc)) {  // the tail's backward read on the fly
    const cuda::kernels::ReluTail rt =
        tail ? cuda::kernels::ReluTail{true, tail->scale, g.plane, tail->y} : cuda::kernels::ReluTail{};
    cuda::kernels::batchnorm_nhwc_backward(x, dy, gamma, mean, invstd, g.count(), g.c, batch_stats, dx, dgamma, dbeta,
                                           rt, t, s);
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  cuda::require_f32(t, "gpu::batchnorm_backward");
  cuda::DeviceScratch dz;  // elsewhere the tail's backward runs first, into scratch
  if (tail) {
    dz.reset(static_cast<std::size_t>(g.count() * g.c) * sizeof(float));
    if (nhwc)
      cuda::kernels::relu_scale_planes_nhwc_backward(tail->y, dy, tail->scale, g.n, g.c, g.plane, dz.floats(),
                                                     DType::f32, s);
    else
      cuda::kernels::relu_scale_planes_backward(static_cast<const float*>(tail->y), static_cast<const float*>(dy),
                                                tail->scale, g.n * g.c, g.plane, dz.floats(), s);
    DD_CUDA_CHECK(cudaGetLastError());
    dy = dz.floats();
  }
  // dgamma and dbeta do not depend on whether the statistics do, so without dx the eval kernel
  // gives them with no dx scratch; with constant statistics it gives everything.
  if (!batch_stats || !dx) {
    cuda::kernels::batchnorm_backward_eval(x, dy, gamma, mean, invstd, g.n, g.c, g.plane, batch_stats ? nullptr : dx,
                                           dgamma, dbeta, nhwc, DType::f32, s);
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const detail::BatchNormDescriptors d(g, nhwc);
  // cuDNN always writes both parameter gradients: stand in zeroed scratch for a missing one.
  cuda::DeviceScratch scratch;
  if (!dgamma || !dbeta) {
    scratch.reset(2 * static_cast<std::size_t>(g.c) * sizeof(float));
    DD_CUDA_CHECK(cudaMemsetAsync(scratch.get(), 0, 2 * static_cast<std::size_t>(g.c) * sizeof(float), s));
    if (!dgamma) dgamma = scratch.floats();
    if (!dbeta) dbeta = scratch.floats() + g.c;
  }
  // With the saved mean and 1/sqrt(var+eps) given, cuDNN does not recompute the statistics, so
  // the epsilon (which this interface does not carry) only has to be a valid one.
  const double epsilon = std::max(1e-5, double(CUDNN_BN_MIN_EPSILON));
  const float one = 1.0f, zero = 0.0f;
  const cuda::AlignedFloats ga(gamma, g.c), dga(dgamma, g.c), dbe(dbeta, g.c), m(mean, g.c), is(invstd, g.c);
  DD_CUDNN_CHECK(cudnnBatchNormalizationBackward(cuda::cudnn_handle(s), CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one,
                                                 &one, d.x, x, d.x, dy, d.x, dx, d.param, ga.get(), dga.get(),
                                                 dbe.get(), epsilon, m.get(), is.get()));
  dga.write_back(), dbe.write_back();
}

}  // namespace dd::gpu
