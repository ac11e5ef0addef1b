#pragma once
// Subimage x data parallelism: the job's P ranks form D groups of G ranks. Each group runs one
// DDU-Net forward over its own images, its G ranks sharing the subimages of each image
// (MpiDistribution over the group's communicator); the D groups take different images of the
// step's batch. The Dice loss is summed over every rank's pieces (the loss of the whole batch),
// and after backward the gradients are summed over the groups (ranks holding the same subimages),
// so every rank takes the same optimizer step. BatchNorm statistics are per group (as in PyTorch's
// DistributedDataParallel without SyncBatchNorm); the running statistics are averaged over groups.
#include <memory>

#include "dd/backend/mpi/distribution.hpp"
#include "dd/models/model_state.hpp"

namespace dd::mpi {

class RankGrid {
 public:
  // ranks_per_image = G; the world's size must be a multiple of it.
  RankGrid(Communicator& world, int ranks_per_image) : world_(&world), G_(ranks_per_image) {
    DD_CHECK(G_ > 0 && world.size() % G_ == 0, "dd::mpi::RankGrid: {} ranks cannot form groups of {} ranks per image",
             world.size(), G_);
    const int group = world.rank() / G_, position = world.rank() % G_;
    subimages_ = world.split(group, position);
    data_ = world.split(position, group);
    dist_ = std::make_shared<MpiDistribution>(subimages_);
    world_dist_ = std::make_shared<MpiDistribution>(*world_);
  }
  RankGrid(const RankGrid&) = delete;
  RankGrid& operator=(const RankGrid&) = delete;

  int groups() const { return world_->size() / G_; }
  int group() const { return world_->rank() / G_; }
  int ranks_per_image() const { return G_; }
  // Give this to DomainDecomposed::distribute.
  const std::shared_ptr<MpiDistribution>& subimage_distribution() const { return dist_; }
  // Pass to dice_loss: the loss of the whole batch, over all ranks' pieces.
  DicePieceGather loss_gather() const { return sum_over(*world_dist_); }
  Communicator& data_communicator() { return data_; }

  // Dropout: the ranks of a group must draw the same masks, different groups different ones.
  void seed_dropout(ModelState& m, std::uint64_t seed) const {
    m.reseed_dropout(seed ^ (0x9E3779B97F4A7C15ull * std::uint64_t(group() + 1)));
  }
  // After backward: gradients summed over the groups (rank order: the same bits on every rank).
  void reduce_gradients(ModelState& m) { sum_over_groups(m.gradients(), false); }
  // After an optimizer step (or at the end of an epoch): running statistics averaged over groups.
  void average_buffers(ModelState& m) { sum_over_groups(m.buffers(), true); }

 private:
  void sum_over_groups(const Tensor& t, bool mean) {
    if (groups() == 1) return;
    Tensor host = t.to(Device::cpu).contiguous().clone();
    data_.all_reduce_sum_buckets(host.data(), host.numel());
    if (mean) host.scale_(1.0f / float(groups()));
    t.copy_from(host);
  }

  Communicator* world_;
  int G_;
  Communicator subimages_{MPI_COMM_NULL}, data_{MPI_COMM_NULL};
  std::shared_ptr<MpiDistribution> dist_, world_dist_;
};

}  // namespace dd::mpi
