// A rank that fails while its peers wait in a collective must end the whole job, not hang it.
// Rank 1 of the job throws dd::Error("simulated failure") after a few all-reduces, while every
// other rank goes on calling all_reduce_sum: they block in a collective rank 1 never enters.
// run_ranks() prints rank 1's error and calls MPI_Abort, which makes mpirun kill the others.
// dead_rank.sh runs this under a timeout and checks the exit status, the message and the time.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "dd/backend/mpi/communicator.hpp"
#include "dd/backend/mpi/environment.hpp"

int main(int argc, char** argv) {
  // "crash": rank 1 dies without a word (as if killed), instead of throwing.
  const bool crash = argc > 1 && std::string(argv[1]) == "crash";
  return dd::mpi::run_ranks(argc, argv, [&]() -> int {
    dd::mpi::Communicator world = dd::mpi::Communicator::world();
    std::vector<float> grad(4096, 1.0f);
    for (int step = 0;; ++step) {
      if (world.rank() == 1 && step == 3) {
        // Give the others time to be blocked inside the next collective.
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        if (crash) std::_Exit(3);
        throw dd::Error("simulated failure");
      }
      world.all_reduce_sum(grad.data(), static_cast<std::int64_t>(grad.size()));
      if (world.rank() == 0) {
        std::printf("dead_rank: step %d done\n", step);
        std::fflush(stdout);
      }
      for (float& g : grad) g = 1.0f;
    }
  });
}
