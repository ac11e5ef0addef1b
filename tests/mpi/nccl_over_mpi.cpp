// NCCL communicator from an MPI job (CUDA + MPI builds). Skips without a GPU; with one, rank 0
// shares the NCCL id over MPI and the ranks all-reduce a buffer on their GPUs (one rank per GPU),
// then a DDU-Net on the GPUs spread over the ranks with NcclDistribution (exchange and gradient sum
// over NCCL) trains a step as the same model in one process does.
#include <cstdio>
#include <memory>
#include <vector>

#include <dd/ddunet.hpp>

#include "dd/backend/mpi/environment.hpp"
#include "dd/backend/mpi/nccl.hpp"
#include "dd/backend/mpi/nccl_distribution.hpp"
#include "tiles.hpp"

namespace {
// DDU-Net(2, 8, Y) on a 2x3 grid of unequal subimages: this rank's logits and everyone's gradients
// after one step, distributed over NCCL, against the undistributed model (same seeds, same GPU).
void ddu_over_nccl(dd::mpi::Communicator& world) {
  using DDU = dd::DomainDecomposed<dd::UNet<2, 1, 3, 4>, dd::CommNet<8>>;
  auto dist = std::make_shared<dd::mpi::NcclDistribution>(world);
  const dd::Shape image{1, 1, 40, 52};
  const dd::Tensor x = dd::Tensor::randn(image, 7), labels = dd::Tensor::full(image, 1.0f);
  DDU ref({2, 3}, dd::Exchange::stitched, 3), m({2, 3}, dd::Exchange::stitched, 3);
  ref.to(dd::Device::cuda), m.to(dd::Device::cuda);
  m.distribute(dist);
  const dd::Grid g = ref.grid_for(image);
  const dd::Var y_ref = ref.forward(dd::Var(x.to(dd::Device::cuda)));
  std::vector<dd::Tensor> all_labels;
  for (const dd::Var& t : dd::cut(y_ref, g))
    all_labels.push_back(dd::Tensor::full({1, 1, t.shape().h, t.shape().w}, 1.0f).to(dd::Device::cuda));
  dd::dice_loss(dd::cut(y_ref, g), all_labels).backward();
  std::vector<dd::Var> in;
  std::vector<dd::Tensor> my_labels;
  for (const dd::Tensor& t : dd::test::my_tiles(m, x)) in.emplace_back(t.to(dd::Device::cuda));
  for (const dd::Tensor& t : dd::test::my_tiles(m, labels)) my_labels.push_back(t.to(dd::Device::cuda));
  const std::vector<dd::Var> y = m.forward_tiles(image, in);
  dd::dice_loss(y, my_labels, dd::mpi::sum_over(*dist)).backward();
  const std::vector<dd::Tensor> want = dd::test::my_tiles(m, y_ref.value());
  for (std::size_t i = 0; i < y.size(); ++i)
    DD_CHECK(dd::test::max_rel(y[i].value(), want[i]) < 1e-5, "nccl_over_mpi: logits of local clone {} differ", i);
  const double dg = dd::test::max_rel(m.gradients(), ref.gradients());
  DD_CHECK(dg < 1e-4, "nccl_over_mpi: gradients differ by {} from one process", dg);
  if (world.rank() == 0) std::printf("nccl_over_mpi: DDU-Net over NCCL: gradients within %.1e of one process\n", dg);
}
}  // namespace

int main(int argc, char** argv) {
  return dd::mpi::run_ranks(argc, argv, [&]() -> int {
    dd::mpi::Communicator world = dd::mpi::Communicator::world();
    if (dd::cuda::device_count() < world.size()) {
      if (world.rank() == 0) std::printf("nccl_over_mpi: %d ranks, %d GPUs: skipped\n", world.size(), dd::cuda::device_count());
      return 0;
    }
    dd::cuda::NcclCommunicator nccl = dd::mpi::nccl_communicator(world);
    const std::size_t n = 1000;
    std::vector<float> host(n, float(world.rank() + 1));
    float* buf = nullptr;
    DD_CUDA_CHECK(cudaMalloc(&buf, n * sizeof(float)));
    DD_CUDA_CHECK(cudaMemcpy(buf, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    nccl.all_reduce_sum(buf, n, dd::cuda::main_stream());
    nccl.wait(dd::cuda::main_stream(), std::chrono::seconds(60));
    DD_CUDA_CHECK(cudaMemcpy(host.data(), buf, n * sizeof(float), cudaMemcpyDeviceToHost));
    DD_CUDA_CHECK(cudaFree(buf));
    const float want = float(world.size() * (world.size() + 1) / 2);
    for (float v : host) DD_CHECK(v == want, "nccl_over_mpi: all-reduce gave {} instead of {}", v, want);
    if (world.rank() == 0) std::printf("nccl_over_mpi: %d ranks: all-reduce over NCCL correct\n", world.size());
    ddu_over_nccl(world);
    return 0;
  });
}
