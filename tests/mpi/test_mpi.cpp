// The MPI backend on however many ranks mpirun starts (ctest: 2 and 4). Every rank runs every test
// case in the same order, so the collectives inside them match up; checks are non-fatal (CHECK,
// not REQUIRE) so that a failure on one rank does not make it skip collectives the others enter.
// main() combines the ranks' verdicts, so every rank exits with the same status.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dd/backend/mpi/communicator.hpp"
#include "dd/backend/mpi/environment.hpp"

using dd::mpi::Communicator;
using dd::mpi::Environment;

namespace {

// Every rank's contribution, computed identically on every rank (so each can form the expected
// rank-order sums). Non-integer values, so that the order of the additions shows in the bits.
template <class T>
std::vector<std::vector<T>> contributions(int ranks, std::int64_t n) {
  std::vector<std::vector<T>> t(static_cast<std::size_t>(ranks), std::vector<T>(static_cast<std::size_t>(n)));
  for (int r = 0; r < ranks; ++r)
    for (std::int64_t i = 0; i < n; ++i)
      t[r][i] = T(0.1) * T(r + 1) + T(1e-3) * T(i) + T(1e-7) * T((r * 31 + i) % 97) - T(0.37) * T(i % 3);
  return t;
}

// A sequential sum in rank order: what all_reduce_sum promises, bit for bit.
template <class T>
std::vector<T> rank_order_sum(const std::vector<std::vector<T>>& t) {
  std::vector<T> s = t[0];
  for (std::size_t r = 1; r < t.size(); ++r)
    for (std::size_t i = 0; i < s.size(); ++i) s[i] += t[r][i];
  return s;
}

// True when every rank holds the same bytes in `v` as this one.
template <class T>
bool same_on_all_ranks(Communicator& comm, const std::vector<T>& v) {
  const auto nbytes = static_cast<std::int64_t>(v.size() * sizeof(T));
  std::vector<float> words((nbytes + 3) / 4, 0.0f);
  std::memcpy(words.data(), v.data(), static_cast<std::size_t>(nbytes));
  std::vector<std::int64_t> counts;
  const std::vector<float> all =
      comm.all_gather_v(words.data(), static_cast<std::int64_t>(words.size()), counts);
  bool same = true;
  for (int r = 0; r < comm.size(); ++r)
    same = same && counts[r] == static_cast<std::int64_t>(words.size()) &&
           std::memcmp(all.data() + r * words.size(), words.data(), words.size() * sizeof(float)) == 0;
  return same;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

TEST_CASE("rank and size agree with MPI_COMM_WORLD") {
  Communicator world = Communicator::world();
  int r = -1, n = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  CAPTURE(r);
  CHECK(world.rank() == r);
  CHECK(world.size() == n);
  CHECK(world.rank() >= 0);
  CHECK(world.rank() < world.size());
  CHECK(world.valid());
  CHECK(!world.owned());
  CHECK(Environment::world_rank() == r);
  CHECK(Environment::world_size() == n);
}

TEST_CASE("all_gather_v concatenates variable counts in rank order") {
  Communicator world = Communicator::world();
  const int me = world.rank(), p = world.size();
  CAPTURE(me);

  // Rank r contributes r + 1 values r * 10 + i.
  std::vector<float> mine(static_cast<std::size_t>(me + 1));
  for (int i = 0; i <= me; ++i) mine[i] = float(me * 10 + i);
  std::vector<std::int64_t> counts;
  const std::vector<float> all = world.all_gather_v(mine.data(), me + 1, counts);
  REQUIRE(counts.size() == static_cast<std::size_t>(p));  // local: the same on every rank
  CHECK(all.size() == static_cast<std::size_t>(p * (p + 1) / 2));
  std::size_t at = 0;
  for (int r = 0; r < p; ++r) {
    CHECK(counts[r] == r + 1);
    for (int i = 0; i <= r && at < all.size(); ++i, ++at) CHECK(all[at] == float(r * 10 + i));
  }

  // Rank r contributes r values: rank 0 nothing (and a null pointer).
  std::vector<float> some(static_cast<std::size_t>(me), float(me));
  const std::vector<float> all2 = world.all_gather_v(me == 0 ? nullptr : some.data(), me, counts);
  CHECK(all2.size() == static_cast<std::size_t>(p * (p - 1) / 2));
  at = 0;
  for (int r = 0; r < p; ++r) {
    CHECK(counts[r] == r);
    for (int i = 0; i < r && at < all2.size(); ++i, ++at) CHECK(all2[at] == float(r));
  }
}

TEST_CASE("all_gather_v: a count over INT_MAX on one rank makes every rank throw") {
  Communicator world = Communicator::world();
  CAPTURE(world.rank());
  const float dummy = 0.0f;
  std::vector<std::int64_t> counts;
  const std::int64_t count = world.rank() == world.size() - 1 ? std::int64_t{INT_MAX} + 1 : 1;
  CHECK_THROWS_WITH_AS(world.all_gather_v(&dummy, count, counts), doctest::Contains("all_gather_v: rank"),
                       dd::Error);
  // The failure left no collective half entered: the communicator still works.
  CHECK(world.all_reduce_max(double(world.rank())) == double(world.size() - 1));
}

TEST_CASE("all_reduce_sum equals the closed form, bit-identically on every rank") {
  Communicator world = Communicator::world();
  const int p = world.size(), me = world.rank();
  CAPTURE(me);

  SUBCASE("float, integer values: exact closed form") {
    const std::int64_t n = 1001;
    std::vector<float> buf(n);
    for (std::int64_t i = 0; i < n; ++i) buf[i] = float((me + 1) + i % 13);
    world.all_reduce_sum(buf.data(), n);
    bool exact = true;
    for (std::int64_t i = 0; i < n; ++i) exact = exact && buf[i] == float(p * (p + 1) / 2 + p * (i % 13));
    CHECK(exact);
    CHECK(same_on_all_ranks(world, buf));
  }
  SUBCASE("double, integer values: exact closed form") {
    const std::int64_t n = 777;
    std::vector<double> buf(n);
    for (std::int64_t i = 0; i < n; ++i) buf[i] = double(me + 1) * 0.5 + double(i);
    world.all_reduce_sum(buf.data(), n);
    bool exact = true;
    for (std::int64_t i = 0; i < n; ++i)
      exact = exact && buf[i] == 0.25 * p * (p + 1) + double(p) * double(i);
    CHECK(exact);
    CHECK(same_on_all_ranks(world, buf));
  }
  SUBCASE("float, general values: the sequential sum in rank order, on every rank") {
    const std::int64_t n = 4099;
    const auto t = contributions<float>(p, n);
    std::vector<float> buf = t[me];
    world.all_reduce_sum(buf.data(), n);
    CHECK(bit_equal(buf, rank_order_sum(t)));
    CHECK(same_on_all_ranks(world, buf));
  }
  SUBCASE("double, general values: the sequential sum in rank order, on every rank") {
    const std::int64_t n = 1500;
    const auto t = contributions<double>(p, n);
    std::vector<double> buf = t[me];
    world.all_reduce_sum(buf.data(), n);
    CHECK(bit_equal(buf, rank_order_sum(t)));
    CHECK(same_on_all_ranks(world, buf));
  }
  SUBCASE("a small scratch bound (many chunks) gives the same bits") {
    const std::int64_t n = 5003;
    const auto t = contributions<float>(p, n);
    std::vector<float> buf = t[me];
    world.set_scratch_bytes(1000);  // chunks of 1000 / (4 p) floats
    world.all_reduce_sum(buf.data(), n);
    CHECK(bit_equal(buf, rank_order_sum(t)));
  }
  SUBCASE("empty buffer") {
    world.all_reduce_sum(static_cast<float*>(nullptr), 0);
    world.all_reduce_sum(static_cast<double*>(nullptr), 0);
    CHECK(world.bytes_sent() == 0);
  }
}

TEST_CASE("all_reduce_sum_buckets over several buckets equals the unbucketed sum") {
  Communicator world = Communicator::world();
  const int p = world.size(), me = world.rank();
  CAPTURE(me);
  const std::int64_t n = 10000;
  const auto t = contributions<float>(p, n);

  std::vector<float> whole = t[me];
  world.all_reduce_sum(whole.data(), n);

  for (const std::int64_t bucket_bytes :
       {std::int64_t{4096}, std::int64_t{4000 * 4 + 4}, std::int64_t{0}, Communicator::kDefaultBucketBytes}) {
    CAPTURE(bucket_bytes);
    std::vector<float> buf = t[me];
    world.reset_bytes_sent();
    world.all_reduce_sum_buckets(buf.data(), n, bucket_bytes);
    CHECK(bit_equal(buf, whole));
    CHECK(world.bytes_sent() == n * 4);
  }

  // The MPI_Allreduce path: exact on integer values, close on others.
  std::vector<float> ints(n);
  for (std::int64_t i = 0; i < n; ++i) ints[i] = float(me + i % 5);
  world.all_reduce_sum_buckets(ints.data(), n, 4096, /*deterministic=*/false);
  bool exact = true;
  for (std::int64_t i = 0; i < n; ++i) exact = exact && ints[i] == float(p * (p - 1) / 2 + p * (i % 5));
  CHECK(exact);
  std::vector<float> fast = t[me];
  world.all_reduce_sum_buckets(fast.data(), n, 4096, /*deterministic=*/false);
  double worst = 0.0;
  for (std::int64_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(double(fast[i]) - double(whole[i])));
  CHECK(worst < 1e-4);
}

TEST_CASE("split into even and odd ranks, and reduce within each group") {
  Communicator world = Communicator::world();
  const int p = world.size(), me = world.rank();
  CAPTURE(me);
  const int color = me % 2;
  Communicator group = world.split(color, me);
  CHECK(group.valid());
  CHECK(group.owned());
  CHECK(group.size() == (p - color + 1) / 2);
  CHECK(group.rank() == me / 2);

  double sum = me, expected = 0;
  for (int r = color; r < p; r += 2) expected += r;
  group.all_reduce_sum(&sum, 1);
  CHECK(sum == expected);

  float mine = float(me);
  std::vector<std::int64_t> counts;
  const std::vector<float> members = group.all_gather_v(&mine, 1, counts);
  CHECK(members.size() == static_cast<std::size_t>(group.size()));
  for (std::size_t k = 0; k < members.size(); ++k) CHECK(members[k] == float(color + 2 * int(k)));

  // Moving keeps the one owner; the moved-from communicator is null and refuses collectives.
  Communicator moved = std::move(group);
  CHECK(moved.owned());
  CHECK(!group.valid());
  CHECK(group.rank() == -1);
  CHECK_THROWS_AS(group.barrier(), dd::Error);
  moved.barrier();

  // Ranks given MPI_UNDEFINED are left out.
  Communicator evens = world.split(me % 2 == 0 ? 0 : MPI_UNDEFINED, 0);
  CHECK(evens.valid() == (me % 2 == 0));
  if (evens.valid()) CHECK(evens.size() == (p + 1) / 2);
}

TEST_CASE("broadcast floats, doubles, bytes and strings") {
  Communicator world = Communicator::world();
  const int p = world.size(), me = world.rank();
  CAPTURE(me);
  const int root = p - 1;
  std::vector<float> f(37, float(me));
  world.broadcast(f.data(), 37, root);
  bool ok = true;
  for (float v : f) ok = ok && v == float(root);
  CHECK(ok);
  std::vector<double> d(5, me == 0 ? 2.5 : -1.0);
  world.broadcast(d.data(), 5, 0);
  CHECK(d == std::vector<double>(5, 2.5));
  char bytes[4] = {char(me), char(me), char(me), char(me)};
  world.broadcast_bytes(bytes, 4, root);
  CHECK(bytes[3] == char(root));
  std::string s = me == 0 ? std::string("id\0with nul", 11) : std::string("other");
  world.broadcast(s, 0);
  CHECK(s == std::string("id\0with nul", 11));
  CHECK_THROWS_AS(world.broadcast(f.data(), 1, p), dd::Error);  // checked locally on every rank
}

TEST_CASE("the byte counter adds this rank's payload of every collective") {
  Communicator world = Communicator::world();
  const int p = world.size(), me = world.rank();
  CAPTURE(me);
  world.reset_counters();
  CHECK(world.bytes_sent() == 0);
  CHECK(world.seconds_in_collectives() == 0.0);

  std::vector<float> f(100, 1.0f);
  std::vector<double> d(10, 1.0);
  std::int64_t expected = 0;
  world.all_reduce_sum(f.data(), 100);
  CHECK(world.bytes_sent() == (expected += 400));
  world.all_reduce_sum(d.data(), 10);
  CHECK(world.bytes_sent() == (expected += 80));
  std::vector<std::int64_t> counts;
  world.all_gather_v(f.data(), me + 1, counts);
  CHECK(world.bytes_sent() == (expected += 8 + 4 * (me + 1)));
  world.all_reduce_sum_buckets(f.data(), 100, 64);
  CHECK(world.bytes_sent() == (expected += 400));
  world.all_reduce_sum_buckets(f.data(), 100, 64, false);
  CHECK(world.bytes_sent() == (expected += 400));
  world.broadcast(f.data(), 50, 0);
  CHECK(world.bytes_sent() == (expected += me == 0 ? 200 : 0));
  (void)world.all_reduce_max(1.0);
  CHECK(world.bytes_sent() == (expected += 8));
  world.barrier();
  CHECK(world.bytes_sent() == expected);
  CHECK(world.seconds_in_collectives() > 0.0);

  // The total over the ranks, from the ranks themselves.
  double total = double(world.bytes_sent());
  world.all_reduce_sum(&total, 1);
  CHECK(total == double(p * (400 + 80 + 8 + 400 + 400 + 8) + 4 * p * (p + 1) / 2 + 200));

  world.reset_counters();
  CHECK(world.bytes_sent() == 0);
  CHECK(world.seconds_in_collectives() == 0.0);
}

TEST_CASE("DD_MPI_CHECK turns an MPI error code into dd::Error") {
  Communicator world = Communicator::world();
  int x = 0;
  // A negative count is rejected by argument checking on every rank, before any communication.
  CHECK_THROWS_WITH_AS(
      [&] { DD_MPI_CHECK(MPI_Bcast(&x, -1, MPI_INT, 0, MPI_COMM_WORLD)); }(),
      doctest::Contains("MPI_Bcast(&x, -1, MPI_INT, 0, MPI_COMM_WORLD) failed: MPI_ERR_COUNT"), dd::Error);
  world.barrier();
}

int main(int argc, char** argv) {
  Environment env(argc, argv);
  const int rank = Environment::world_rank(), size = Environment::world_size();
  doctest::Context ctx(argc, argv);
  if (rank != 0) {  // rank 0 reports; the others only their failures
    ctx.setOption("minimal", true);
    ctx.setOption("no-colors", true);
  }
  const int failed = ctx.run() != 0 ? 1 : 0;
  int failed_ranks = 0;
  MPI_Allreduce(&failed, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("test_mpi: %d rank(s) of %d failed (MPI thread level %d)\n", failed_ranks, size,
                env.thread_level());
  return failed_ranks == 0 ? 0 : 1;
}
