// The copies around the concatenations of a U-Net(4) base-16 training step on one 1024 x 1024
// image, ours (Tensor::copy_from on GPU views, the strided-copy plans of kernels/cuda/copy_plan.hpp)
// against the CUDA runtime's own pitched copy (cudaMemcpy2DAsync), the peer: at every decoder level
// a part of c channels written into its channel slice of the channels-last concatenation (forward)
// and read back out of it (the gradient's way), in f32 and bf16. Both results are compared byte
// for byte before anything is timed. Prints a line per copy and a JSON summary; ratio = ours / peer.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <dd/ddunet.hpp>

namespace {

// Milliseconds per call of f: the median of 7 batches of `reps` calls timed with CUDA events.
template <class F>
double time_ms(const F& f, int reps) {
  const cudaStream_t s = dd::cuda::current_stream();
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t a, b;
  DD_CUDA_CHECK(cudaEventCreate(&a));
  DD_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> batches;
  for (int k = 0; k < 7; ++k) {
    DD_CUDA_CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < reps; ++i) f();
    DD_CUDA_CHECK(cudaEventRecord(b, s));
    DD_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    DD_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    batches.push_back(ms / static_cast<float>(reps));
  }
  DD_CUDA_CHECK(cudaEventDestroy(a));
  DD_CUDA_CHECK(cudaEventDestroy(b));
  std::nth_element(batches.begin(), batches.begin() + 3, batches.end());
  return batches[3];
}

std::vector<unsigned char> host_bytes(const dd::Tensor& t) {
  std::vector<unsigned char> h(t.bytes());
  dd::cuda::synchronize_device();
  DD_CUDA_CHECK(cudaMemcpy(h.data(), t.raw(), h.size(), cudaMemcpyDeviceToHost));
  return h;
}

}  // namespace

int main() try {
  if (!dd::cuda::available()) {
    std::puts("no CUDA device");
    return 1;
  }
  const cudaStream_t s = dd::cuda::current_stream();
  double ours_total = 0, peer_total = 0;
  for (const dd::DType t : {dd::DType::f32, dd::DType::bf16}) {
    const std::size_t es = dd::dtype_size(t);
    for (int level = 0; level < 4; ++level) {
      const std::int64_t r = 1024 >> level, c = 16 << level;
      // The concatenation [skip, up] of 2c channels, and one part of c channels, channels-last.
      const dd::Tensor cat = dd::Tensor::zeros({1, 2 * c, r, r}, dd::Device::cuda, dd::MemoryFormat::nhwc, t);
      const dd::Tensor part = dd::Tensor::randn({1, c, r, r}, 7).to(dd::Device::cuda).to(t).clone_as(
          dd::MemoryFormat::nhwc);
      const dd::Tensor slot = cat.channels(c, c);  // the second part's slice
      auto* slot_p = static_cast<unsigned char*>(cat.raw()) + static_cast<std::size_t>(c) * es;
      const std::size_t row = static_cast<std::size_t>(c) * es, pitch = 2 * row, rows = static_cast<std::size_t>(r * r);
      const auto into_ours = [&] { slot.copy_from(part); };
      const auto into_peer = [&] {
        DD_CUDA_CHECK(cudaMemcpy2DAsync(slot_p, pitch, part.raw(), row, row, rows, cudaMemcpyDeviceToDevice, s));
      };
      const dd::Tensor back = dd::Tensor::empty_like(part);
      const auto out_ours = [&] { back.copy_from(slot); };
      const auto out_peer = [&] {
        DD_CUDA_CHECK(cudaMemcpy2DAsync(back.raw(), row, slot_p, pitch, row, rows, cudaMemcpyDeviceToDevice, s));
      };
      // Same bytes from both (the copies under test must be right before they are fast).
      into_ours();
      const auto a = host_bytes(cat);
      cat.fill(0.0f);
      into_peer();
      DD_CHECK(host_bytes(cat) == a, "copy into the slice: ours and cudaMemcpy2DAsync differ ({}, level {})",
               dd::dtype_name(t), level);
      out_ours();
      const auto b = host_bytes(back);
      back.fill(0.0f);
      out_peer();
      DD_CHECK(host_bytes(back) == b && b == host_bytes(part), "copy out of the slice differs ({}, level {})",
               dd::dtype_name(t), level);
      const int reps = level < 2 ? 20 : 50;
      const double gb = 2.0 * static_cast<double>(rows * row) / 1e9;  // read + written
      for (const bool into : {true, false}) {
        const double ours = into ? time_ms(into_ours, reps) : time_ms(out_ours, reps);
        const double peer = into ? time_ms(into_peer, reps) : time_ms(out_peer, reps);
        ours_total += ours, peer_total += peer;
        std::printf("%s level %d (%lld channels of %lld^2) %s the slice: ours %.4f ms (%.0f GB/s), "
                    "cudaMemcpy2DAsync %.4f ms (%.0f GB/s), ratio %.2f\n",
                    dd::dtype_name(t), level, static_cast<long long>(c), static_cast<long long>(r),
                    into ? "into" : "out of", ours, gb / ours * 1e3, peer, gb / peer * 1e3, ours / peer);
      }
    }
  }
  std::printf("{\"framework\": \"ddunet\", \"case\": \"concat_copies\", \"ours_ms\": %.4f, \"peer_ms\": %.4f, "
              "\"ratio\": %.3f}\n",
              ours_total, peer_total, ours_total / peer_total);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_copies: %s\n", e.what());
  return 1;
}
