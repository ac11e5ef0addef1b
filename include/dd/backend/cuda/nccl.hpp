#pragma once
// NCCL communicators: one per GPU, collectives on float buffers, and a bounded wait. NCCL
// collectives never time out by themselves (a rank whose peer died spins forever), so every
// blocking point here polls the stream and the communicator's error state against a deadline and
// aborts the communicator when it passes: a dead peer ends the job with an error instead of a hang.
// Host code only: compiled by the C++ compiler, linked with -lnccl -lcudart.
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dd/backend/cuda/runtime.hpp"
#include "dd/core/error.hpp"

#define DD_NCCL_CHECK(expr)                                                                                 \
  do {                                                                                                      \
    const ncclResult_t dd_nccl_status_ = (expr);                                                            \
    if (dd_nccl_status_ != ncclSuccess) [[unlikely]]                                                        \
      ::dd::fail("dd::cuda: {} failed: {}", #expr, ncclGetErrorString(dd_nccl_status_));                   \
  } while (0)

namespace dd::cuda {

class NcclCommunicator {
 public:
  using Clock = std::chrono::steady_clock;

  // An id for ncclCommInitRank, as bytes, so it can travel over MPI or a file to the other ranks.
  static std::string unique_id() {
    ncclUniqueId id;
    DD_NCCL_CHECK(ncclGetUniqueId(&id));
    return std::string(id.internal, sizeof(id.internal));
  }

  // Joins rank `rank` of `nranks` on `device` (which becomes this thread's current device). The
  // communicator is non-blocking, so a peer that never arrives makes this throw after `timeout`
  // rather than wait forever; the same timeout bounds the enqueueing of each collective.
  NcclCommunicator(const std::string& id, int nranks, int rank, int device,
                   std::chrono::milliseconds timeout = std::chrono::minutes(5))
      : rank_(rank), size_(nranks), device_(device), timeout_(timeout) {
    DD_CHECK(id.size() == sizeof(ncclUniqueId), "dd::cuda: NCCL unique id has {} bytes, expected {}", id.size(),
             sizeof(ncclUniqueId));
    DD_CHECK(nranks > 0 && rank >= 0 && rank < nranks, "dd::cuda: NCCL rank {} out of range for {} ranks", rank,
             nranks);
    ncclUniqueId uid;
    std::memcpy(uid.internal, id.data(), sizeof(uid.internal));
    DD_CUDA_CHECK(cudaSetDevice(device));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    last_op_ = "init";
    issued(ncclCommInitRankConfig(&comm_, nranks, uid, rank, &config), "ncclCommInitRankConfig");
  }

  // One communicator per device, all driven by this process (rank i on devices[i]). These are
  // blocking communicators (ncclCommInitAll has no config); wait() still bounds their collectives.
  // Collectives over several of them from one thread must sit between group_start() and group_end().
  static std::vector<NcclCommunicator> all_local(const std::vector<int>& devices) {
    DD_CHECK(!devices.empty(), "dd::cuda: all_local needs at least one device");
    std::vector<ncclComm_t> comms(devices.size(), nullptr);
    DD_NCCL_CHECK(ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()));
    std::vector<NcclCommunicator> out;
    out.reserve(devices.size());
    for (std::size_t i = 0; i < devices.size(); ++i)
      out.push_back(NcclCommunicator(comms[i], static_cast<int>(i), static_cast<int>(devices.size()), devices[i]));
    return out;
  }

  NcclCommunicator(NcclCommunicator&& o) noexcept
      : comm_(std::exchange(o.comm_, nullptr)), rank_(o.rank_), size_(o.size_), device_(o.device_),
        timeout_(o.timeout_), last_op_(o.last_op_) {}
  NcclCommunicator& operator=(NcclCommunicator&& o) noexcept {
    if (this != &o) {
      release();
      comm_ = std::exchange(o.comm_, nullptr);
      rank_ = o.rank_, size_ = o.size_, device_ = o.device_, timeout_ = o.timeout_, last_op_ = o.last_op_;
    }
    return *this;
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() { release(); }

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }
  ncclComm_t get() const { return comm_; }
  bool aborted() const { return comm_ == nullptr; }

  // Collectives enqueue on `stream` and return; wait() (or a later stream sync) sees them finish.
  // recv holds size() * count_per_rank floats, rank r's block at r * count_per_rank.
  void all_gather(const float* send, float* recv, std::size_t count_per_rank, cudaStream_t stream) {
    begin("all_gather");
    issued(ncclAllGather(send, recv, count_per_rank, ncclFloat, comm_, stream), "ncclAllGather");
  }
  void all_reduce_sum(float* buf, std::size_t count, cudaStream_t stream) {
    begin("all_reduce_sum");
    issued(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, comm_, stream), "ncclAllReduce");
  }
  // In place: every rank's buf ends up holding root's.
  void broadcast(float* buf, std::size_t count, int root, cudaStream_t stream) {
    begin("broadcast");
    issued(ncclBroadcast(buf, buf, count, ncclFloat, root, comm_, stream), "ncclBroadcast");
  }

  // Gradient all-reduce of one flat buffer in chunks of about bucket_bytes, all in one group: NCCL
  // fuses them into few launches, and no chunk is so large that its scratch space or a single
  // ring step dominates. bucket_bytes == 0 means one bucket.
  void all_reduce_buckets(float* flat, std::size_t count, std::size_t bucket_bytes, cudaStream_t stream) {
    begin("all_reduce_buckets");
    const std::size_t per = bucket_bytes == 0 ? count : std::max<std::size_t>(1, bucket_bytes / sizeof(float));
    DD_NCCL_CHECK(ncclGroupStart());
    ncclResult_t r = ncclSuccess;
    for (std::size_t off = 0; off < count && (r == ncclSuccess || r == ncclInProgress); off += per)
      r = ncclAllReduce(flat + off, flat + off, std::min(per, count - off), ncclFloat, ncclSum, comm_, stream);
    const ncclResult_t end = ncclGroupEnd();  // always closed, even after a failed call
    issued(r, "ncclAllReduce (bucket)");
    issued(end, "ncclGroupEnd");
  }

  // Calls for several communicators (one thread, several GPUs) or several collectives, fused.
  // With non-blocking communicators group_end may return before the work is enqueued: follow it
  // with wait() on each communicator, which also waits for that.
  static void group_start() { DD_NCCL_CHECK(ncclGroupStart()); }
  static void group_end() {
    const ncclResult_t r = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress) fail("dd::cuda: ncclGroupEnd failed: {}", ncclGetErrorString(r));
  }

  // Returns when all work on `stream` is done. Throws (after aborting the communicator, which
  // stops its kernels and frees it) when NCCL reports an asynchronous error, e.g. a peer that
  // died, or when `timeout` passes first.
  void wait(cudaStream_t stream, std::chrono::milliseconds timeout) {
    alive();
    const auto start = Clock::now();
    for (unsigned spins = 0;; ++spins) {
      const ncclResult_t state = async_state();
      if (state != ncclSuccess && state != ncclInProgress)
        abort_and_fail(start, fmt::format("NCCL reported {}", describe(state)));
      if (state == ncclSuccess) {  // enqueued: now the stream tells whether it ran
        const cudaError_t q = cudaStreamQuery(stream);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) {
          (void)cudaGetLastError();
          abort_and_fail(start, fmt::format("CUDA reported {}", cudaGetErrorString(q)));
        }
      }
      if (Clock::now() - start > timeout)
        abort_and_fail(start, fmt::format("not finished within the {} ms timeout (a peer may be dead or never "
                                          "issued the matching call)", timeout.count()));
      backoff(spins);
    }
  }

 private:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device)
      : comm_(comm), rank_(rank), size_(size), device_(device), timeout_(std::chrono::minutes(5)) {}

  void alive() const {
    DD_CHECK(comm_ != nullptr, "dd::cuda: NCCL rank {} of {}: communicator was aborted after {} failed", rank_, size_,
             last_op_);
  }
  void begin(const char* op) {
    alive();
    last_op_ = op;
  }

  ncclResult_t async_state() const {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    return r == ncclSuccess ? state : r;
  }
  std::string describe(ncclResult_t r) const {
    const char* last = ncclGetLastError(comm_);
    return fmt::format("{}{}{}", ncclGetErrorString(r), last && *last ? ": " : "", last ? last : "");
  }

  // A call on a non-blocking communicator may return ncclInProgress before it has enqueued
  // anything (init, connection setup); settle until NCCL says it is done, bounded by timeout_.
  // ncclSuccess means enqueued (or, inside an open group, recorded), so there is nothing to poll.
  void issued(ncclResult_t r, const char* call) {
    if (r == ncclSuccess) return;
    const auto start = Clock::now();
    if (r != ncclInProgress) {
      const std::string why = fmt::format("{} failed: {}", call, describe(r));
      if (comm_) abort_and_fail(start, why);
      fail("dd::cuda: NCCL rank {} of {}: {}", rank_, size_, why);
    }
    for (unsigned spins = 0;; ++spins) {
      const ncclResult_t state = async_state();
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) abort_and_fail(start, fmt::format("{} failed: {}", call, describe(state)));
      if (Clock::now() - start > timeout_)
        abort_and_fail(start, fmt::format("{} not done within the {} ms timeout (are all ranks up?)", call,
                                          timeout_.count()));
      backoff(spins);
    }
  }

  // Spin briefly (collectives of a training step take microseconds), then sleep up to 1 ms.
  static void backoff(unsigned spins) {
    if (spins < 64) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000u, spins)));
  }

  [[noreturn]] void abort_and_fail(Clock::time_point start, const std::string& why) {
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    (void)ncclCommAbort(comm_);  // frees the communicator; later calls on it fail in alive()
    comm_ = nullptr;
    fail("dd::cuda: NCCL rank {} of {} (device {}): {}: {} ({} ms elapsed); communicator aborted", rank_, size_,
         device_, last_op_, why, elapsed);
  }

  // Destroy, not Finalize + Destroy: ungrouped Finalize of several local communicators from one
  // thread waits on the others and deadlocks, while the last Destroy in a process finalizes all of
  // them itself. A communicator in an error state is aborted instead (Destroy could wait on a peer).
  void release() noexcept {
    if (!comm_) return;
    const ncclResult_t state = async_state();
    if (state == ncclSuccess || state == ncclInProgress) (void)ncclCommDestroy(comm_);
    else (void)ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 0, device_ = 0;
  std::chrono::milliseconds timeout_;
  const char* last_op_ = "none";
};

}  // namespace dd::cuda
