#pragma once
// MPI communicators: rank/size, split, and the collectives that data-parallel training needs (all
// gathers of variable length, gradient sums, broadcasts), with counters of the bytes this rank
// sends and the time it spends inside collectives, which the scaling benchmark reads.
//
// Determinism. MPI_Allreduce(MPI_SUM) on floating point is not reproducible in general: the
// reduction order depends on the algorithm the library picks (by message size, process count,
// topology, tuning files), so the same inputs can give sums that differ in the last bits between
// runs, between library versions, and in principle between ranks. Replicas of a model whose
// gradients differ by one ulp drift apart. So all_reduce_sum (float and double) is implemented as
// an MPI_Allgather of every rank's buffer followed by a local summation in rank order
// 0, 1, ..., size-1: every rank computes exactly the same additions in the same order, so all
// ranks get bit-identical results, equal to a sequential sum in rank order, run after run. It sends
// the same bytes per rank as a ring all-reduce would receive, at the cost of size * n scratch
// (bounded: buffers are processed in chunks of at most scratch_bytes() of gathered data) and of the
// summation on every rank; for gradients of up to a few million floats on a few ranks that is
// cheap. all_reduce_sum_buckets(..., deterministic = false) uses MPI_Allreduce instead, for when
// bandwidth at scale matters more than reproducibility.
//
// All collectives must be called by every rank of the communicator in the same order with
// matching arguments. Errors throw dd::Error (the communicators carry MPI_ERRORS_RETURN); argument
// errors that depend on other ranks' data (all_gather_v sizes) are detected identically on every
// rank, so all of them throw together instead of some of them waiting in a collective.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dd/backend/mpi/environment.hpp"
#include "dd/core/error.hpp"

namespace dd::mpi {

class Communicator {
 public:
  using Clock = std::chrono::steady_clock;

  // Default bucket of all_reduce_sum_buckets.
  static constexpr std::int64_t kDefaultBucketBytes = std::int64_t{32} << 20;
  // Default upper bound of the gathered scratch (size * chunk elements) of the rank-order sums.
  static constexpr std::int64_t kScratchBytes = std::int64_t{64} << 20;
  // Largest element count passed to one MPI call (MPI counts are int).
  static constexpr std::int64_t kMaxCount = std::int64_t{1} << 30;

  // Non-owning view of `comm` (e.g. MPI_COMM_WORLD, or a communicator owned elsewhere).
  explicit Communicator(MPI_Comm comm) : Communicator(comm, false) {}

  // Takes ownership of `comm` (freed with MPI_Comm_free on destruction), e.g. from MPI_Comm_dup.
  static Communicator adopt(MPI_Comm comm) { return Communicator(comm, true); }

  // MPI_COMM_WORLD (non-owning). Needs an Environment (MPI initialised).
  static Communicator world() {
    DD_CHECK(initialized() && !finalized(),
             "dd::mpi: Communicator::world() needs MPI initialised (create a "
             "dd::mpi::Environment first, or use run_ranks)");
    return Communicator(MPI_COMM_WORLD, false);
  }

  Communicator(Communicator&& o) noexcept
      : comm_(std::exchange(o.comm_, MPI_COMM_NULL)),
        owned_(std::exchange(o.owned_, false)),
        rank_(std::exchange(o.rank_, -1)),
        size_(std::exchange(o.size_, 0)),
        bytes_sent_(o.bytes_sent_),
        seconds_(o.seconds_),
        scratch_bytes_(o.scratch_bytes_) {}
  Communicator& operator=(Communicator&& o) noexcept {
    if (this != &o) {
      release();
      comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
      owned_ = std::exchange(o.owned_, false);
      rank_ = std::exchange(o.rank_, -1), size_ = std::exchange(o.size_, 0);
      bytes_sent_ = o.bytes_sent_, seconds_ = o.seconds_;
      scratch_bytes_ = o.scratch_bytes_;
    }
    return *this;
  }
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator() { release(); }

  // rank() is -1 and size() 0 for MPI_COMM_NULL (a rank that split() left out, or a moved-from one).
  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm get() const { return comm_; }
  bool valid() const { return comm_ != MPI_COMM_NULL; }
  bool owned() const { return owned_; }

  // --- Counters ---------------------------------------------------------------------------------
  // Bytes of payload this rank contributes to collectives: all_reduce_* count the buffer once
  // (n * element size), all_gather_v its own count * 4 plus the 8-byte count it shares, broadcasts
  // n * element size on the root and nothing elsewhere; barrier and split count none. What the MPI
  // library moves on the wire (algorithm dependent) is not measured.
  std::int64_t bytes_sent() const { return bytes_sent_; }
  // Wall time spent inside this communicator's collectives (including waits for slower ranks).
  double seconds_in_collectives() const { return seconds_; }
  void reset_bytes_sent() { bytes_sent_ = 0; }
  void reset_seconds_in_collectives() { seconds_ = 0.0; }
  void reset_counters() { reset_bytes_sent(), reset_seconds_in_collectives(); }

  // Bound of the scratch of the rank-order sums (default kScratchBytes): buffers are gathered in
  // chunks of max(1, bytes / (size * element size)) elements. Must be equal on all ranks (it
  // sets the message sizes); the results do not depend on it.
  void set_scratch_bytes(std::int64_t bytes) {
    DD_CHECK(bytes > 0, "dd::mpi: set_scratch_bytes({}): must be positive", bytes);
    scratch_bytes_ = bytes;
  }
  std::int64_t scratch_bytes() const { return scratch_bytes_; }

  // --- Collectives ------------------------------------------------------------------------------
  // Partitions the ranks: those with the same color form one new communicator, ordered by key
  // (ties by rank in this one). The result owns its MPI_Comm. color == MPI_UNDEFINED gives an
  // invalid communicator (valid() false) on that rank.
  Communicator split(int color, int key) {
    alive("split");
    MPI_Comm out = MPI_COMM_NULL;
    timed(0, [&] { DD_MPI_CHECK(MPI_Comm_split(comm_, color, key, &out)); });
    if (out != MPI_COMM_NULL) {
      Communicator c(out, true);
      DD_MPI_CHECK(MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN));
      return c;
    }
    return Communicator(MPI_COMM_NULL, false);
  }

  void barrier() {
    alive("barrier");
    timed(0, [&] { DD_MPI_CHECK(MPI_Barrier(comm_)); });
  }

  // Concatenation, in rank order, of every rank's `count` floats; counts_out[r] is rank r's count.
  // Each rank's count and the total must fit an int (MPI counts); otherwise every rank throws.
  std::vector<float> all_gather_v(const float* send, std::int64_t count,
                                  std::vector<std::int64_t>& counts_out) {
    alive("all_gather_v");
    std::vector<float> out;
    const auto t0 = Clock::now();
    counts_out.assign(static_cast<std::size_t>(size_), 0);
    const std::int64_t mine = count;
    DD_MPI_CHECK(MPI_Allgather(&mine, 1, MPI_INT64_T, counts_out.data(), 1, MPI_INT64_T, comm_));
    std::vector<int> counts(counts_out.size()), displs(counts_out.size());
    std::int64_t total = 0;
    for (std::size_t r = 0; r < counts_out.size(); ++r) {
      const std::int64_t c = counts_out[r];
      DD_CHECK(c >= 0 && c <= INT_MAX,
               "dd::mpi: all_gather_v: rank {} of {} contributes {} floats; each rank's "
               "count must lie in [0, {}]",
               r, size_, c, INT_MAX);
      DD_CHECK(total + c <= INT_MAX,
               "dd::mpi: all_gather_v: ranks 0..{} alone contribute {} floats, more than the "
               "limit of {} in all (MPI displacements are int)",
               r, total + c, INT_MAX);
      counts[r] = static_cast<int>(c);
      displs[r] = static_cast<int>(total);
      total += c;
    }
    out.resize(static_cast<std::size_t>(total));
    DD_MPI_CHECK(MPI_Allgatherv(send, static_cast<int>(count), MPI_FLOAT, out.data(), counts.data(),
                                displs.data(), MPI_FLOAT, comm_));
    account(t0, static_cast<std::int64_t>(sizeof(std::int64_t)) +
                    count * static_cast<std::int64_t>(sizeof(float)));
    return out;
  }

  // In-place sums over the ranks, deterministic (see the top of this file): every rank gets the
  // same bits, those of a sequential sum in rank order.
  void all_reduce_sum(float* buf, std::int64_t n) { sum_in_rank_order(buf, n, MPI_FLOAT, scratch_f_); }
  void all_reduce_sum(double* buf, std::int64_t n) { sum_in_rank_order(buf, n, MPI_DOUBLE, scratch_d_); }

  // The gradient sum: `buf` reduced in buckets of at most bucket_bytes (a few large collectives
  // instead of one per tensor, none so large that its scratch dominates). deterministic = true
  // gives exactly all_reduce_sum's bits; false uses MPI_Allreduce (library-chosen order: results
  // may differ between runs, process counts and, in principle, ranks). bucket_bytes <= 0: one bucket.
  void all_reduce_sum_buckets(float* buf, std::int64_t n, std::int64_t bucket_bytes = kDefaultBucketBytes,
                              bool deterministic = true) {
    alive("all_reduce_sum_buckets");
    DD_CHECK(n >= 0, "dd::mpi: all_reduce_sum_buckets: negative count {}", n);
    const std::int64_t per =
        bucket_bytes <= 0
            ? std::max<std::int64_t>(n, 1)
            : std::max<std::int64_t>(1, bucket_bytes / static_cast<std::int64_t>(sizeof(float)));
    for (std::int64_t off = 0; off < n; off += per) {
      const std::int64_t c = std::min(per, n - off);
      if (deterministic) {
        all_reduce_sum(buf + off, c);
        continue;
      }
      const auto t0 = Clock::now();
      for (std::int64_t o = 0; o < c; o += kMaxCount)
        DD_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + off + o, static_cast<int>(std::min(kMaxCount, c - o)),
                                   MPI_FLOAT, MPI_SUM, comm_));
      account(t0, c * static_cast<std::int64_t>(sizeof(float)));
    }
  }

  // Maximum over the ranks (exact, hence deterministic), e.g. of a per-rank step time.
  double all_reduce_max(double value) {
    alive("all_reduce_max");
    double out = value;
    timed(sizeof(double), [&] { DD_MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_MAX, comm_)); });
    return out;
  }

  // In place: every rank's buffer ends up holding root's.
  void broadcast(float* buf, std::int64_t n, int root) { bcast(buf, n, MPI_FLOAT, sizeof(float), root); }
  void broadcast(double* buf, std::int64_t n, int root) { bcast(buf, n, MPI_DOUBLE, sizeof(double), root); }
  void broadcast_bytes(void* buf, std::int64_t nbytes, int root) { bcast(buf, nbytes, MPI_BYTE, 1, root); }
  // root's string on every rank (its length first), e.g. an NCCL unique id.
  void broadcast(std::string& s, int root) {
    std::int64_t len = static_cast<std::int64_t>(s.size());
    bcast(&len, 1, MPI_INT64_T, sizeof(len), root);
    s.resize(static_cast<std::size_t>(len));
    bcast(s.data(), len, MPI_BYTE, 1, root);
  }

 private:
  Communicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    if (comm_ == MPI_COMM_NULL) return;
    DD_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    DD_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }

  void alive(const char* op) const {
    DD_CHECK(comm_ != MPI_COMM_NULL, "dd::mpi: {} on a null communicator (moved from, or left out by split)",
             op);
  }

  void account(Clock::time_point t0, std::int64_t bytes) {
    seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
    bytes_sent_ += bytes;
  }
  template <class F>
  void timed(std::int64_t bytes, F&& f) {
    const auto t0 = Clock::now();
    f();
    account(t0, bytes);
  }

  template <class T>
  void sum_in_rank_order(T* buf, std::int64_t n, MPI_Datatype type, std::vector<T>& scratch) {
    alive("all_reduce_sum");
    DD_CHECK(n >= 0, "dd::mpi: all_reduce_sum: negative count {}", n);
    const auto t0 = Clock::now();
    if (size_ > 1 && n > 0) {
      const std::int64_t p = size_;
      const std::int64_t per =
          std::clamp<std::int64_t>(scratch_bytes_ / (p * static_cast<std::int64_t>(sizeof(T))), 1,
                                   std::min<std::int64_t>(kMaxCount, n));
      scratch.resize(static_cast<std::size_t>(p * per));
      for (std::int64_t off = 0; off < n; off += per) {
        const std::int64_t c = std::min(per, n - off);
        T* part = buf + off;
        const T* g = scratch.data();
        DD_MPI_CHECK(
            MPI_Allgather(part, static_cast<int>(c), type, scratch.data(), static_cast<int>(c), type, comm_));
        // part = g[0] + g[1] + ... + g[p-1], left to right, per element: the same additions on
        // every rank (the element loop may be vectorised; the rank order of each element is not).
        std::copy(g, g + c, part);
        for (std::int64_t r = 1; r < p; ++r) {
          const T* gr = g + r * c;
          for (std::int64_t i = 0; i < c; ++i) part[i] += gr[i];
        }
      }
    }
    account(t0, n * static_cast<std::int64_t>(sizeof(T)));
  }

  void bcast(void* buf, std::int64_t n, MPI_Datatype type, std::int64_t elem_bytes, int root) {
    alive("broadcast");
    DD_CHECK(n >= 0, "dd::mpi: broadcast: negative count {}", n);
    DD_CHECK(root >= 0 && root < size_, "dd::mpi: broadcast: root {} out of range for {} ranks", root, size_);
    const auto t0 = Clock::now();
    char* bytes = static_cast<char*>(buf);
    for (std::int64_t o = 0; o < n; o += kMaxCount)
      DD_MPI_CHECK(
          MPI_Bcast(bytes + o * elem_bytes, static_cast<int>(std::min(kMaxCount, n - o)), type, root, comm_));
    account(t0, rank_ == root ? n * elem_bytes : 0);
  }

  // Frees an owned communicator while MPI is still up (after MPI_Finalize nothing may be freed).
  void release() noexcept {
    if (owned_ && comm_ != MPI_COMM_NULL && initialized() && !finalized()) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
    owned_ = false;
    rank_ = -1, size_ = 0;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = -1, size_ = 0;
  std::int64_t bytes_sent_ = 0;
  double seconds_ = 0.0;
  std::int64_t scratch_bytes_ = kScratchBytes;
  std::vector<float> scratch_f_;
  std::vector<double> scratch_d_;
};

}  // namespace dd::mpi
