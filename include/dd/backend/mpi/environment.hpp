#pragma once
// MPI process environment: initialisation and finalisation (RAII), error checking, and a main()
// wrapper that turns an exception on any rank into the end of the whole job.
//
// MPI's default error handler on MPI_COMM_WORLD aborts the job with a terse message; Environment
// installs MPI_ERRORS_RETURN instead, so every MPI call returns its error code and DD_MPI_CHECK
// turns it into a dd::Error naming the call. A rank that throws must not simply return from main:
// its peers may be blocked in a collective that it will never enter, and MPI has no timeout, so the
// job would hang. run_ranks() therefore reports the error and calls MPI_Abort, which makes the
// launcher (mpirun) kill every rank of the job.
// Link with MPI (the CMake target dd::mpi, which also defines DD_WITH_MPI=1).

// The deprecated MPI C++ bindings are not used; skip them so that they need not be linked.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>

#include "dd/core/error.hpp"

namespace dd::mpi {

// The text of an MPI error code ("MPI_ERR_COUNT: invalid count argument" and the like).
inline std::string error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(len));
}

}  // namespace dd::mpi

// Evaluates an MPI call and throws dd::Error naming the call and MPI's description of the error.
// Needs MPI_ERRORS_RETURN on the communicator (Environment sets it on MPI_COMM_WORLD, and
// communicators split from it inherit it); with MPI's default handler the job aborts instead.
#define DD_MPI_CHECK(expr)                                                                  \
  do {                                                                                      \
    const int dd_mpi_status_ = (expr);                                                      \
    if (dd_mpi_status_ != MPI_SUCCESS) [[unlikely]]                                         \
      ::dd::fail("dd::mpi: {} failed: {}", #expr, ::dd::mpi::error_string(dd_mpi_status_)); \
  } while (0)

namespace dd::mpi {

inline bool initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}
inline bool finalized() {
  int flag = 0;
  MPI_Finalized(&flag);
  return flag != 0;
}

// Initialises MPI with MPI_THREAD_FUNNELED (OpenMP threads compute, only the main thread calls
// MPI) unless something else already did, and finalises it when destroyed if it initialised it.
// One per process, created at the start of main() (or use run_ranks()).
class Environment {
 public:
  Environment(int& argc, char**& argv) : Environment(&argc, &argv) {}
  // No command line (MPI_Init_thread accepts null argc/argv).
  Environment() : Environment(nullptr, nullptr) {}

  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  // Finalises MPI if this object initialised it and nobody finalised or aborted it meanwhile.
  // When the destructor runs because an exception is unwinding the stack, MPI_Finalize could
  // wait forever for peers that are still inside a collective; the job is aborted instead.
  ~Environment() {
    if (!owner_ || aborted_flag() || finalized()) return;
    if (std::uncaught_exceptions() > uncaught_at_start_) abort(1);
    MPI_Finalize();
  }

  // The thread support MPI granted (MPI_THREAD_SINGLE .. MPI_THREAD_MULTIPLE).
  int thread_level() const { return thread_level_; }
  // Whether this object called MPI_Init_thread (and so will call MPI_Finalize).
  bool owner() const { return owner_; }

  // Rank and size in MPI_COMM_WORLD.
  static int world_rank() {
    int r = 0;
    DD_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &r));
    return r;
  }
  static int world_size() {
    int n = 0;
    DD_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
    return n;
  }

  // Ends every rank of the job (MPI_Abort on MPI_COMM_WORLD); the destructor then leaves MPI alone.
  [[noreturn]] static void abort(int code) noexcept {
    aborted_flag() = true;
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return in practice; make sure this rank ends regardless
  }

 private:
  Environment(int* argc, char*** argv) : uncaught_at_start_(std::uncaught_exceptions()) {
    DD_CHECK(!finalized(), "dd::mpi: MPI was already finalized; it cannot be initialised again");
    if (!initialized()) {
      DD_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &thread_level_));
      owner_ = true;
    } else {
      DD_MPI_CHECK(MPI_Query_thread(&thread_level_));
    }
    DD_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  }

  static bool& aborted_flag() {
    static bool aborted = false;
    return aborted;
  }

  bool owner_ = false;
  int thread_level_ = MPI_THREAD_SINGLE;
  int uncaught_at_start_ = 0;
};

// Runs body() (returning the exit status) as the whole of an MPI program's main():
//
//   int main(int argc, char** argv) {
//     return dd::mpi::run_ranks(argc, argv, [&] { ...; return 0; });
//   }
//
// An exception escaping body() on any rank is printed to stderr as
// "ddunet rank R of N: error: <what>" and ends the whole job through MPI_Abort (exit status 1),
// so the other ranks do not stay blocked in a collective. A normal return finalises MPI; ranks
// returning different statuses are reported by mpirun as usual.
template <class Fn>
int run_ranks(int argc, char** argv, Fn&& body) {
  int rank = -1, size = -1;
  auto report = [&](const char* what) noexcept {
    if (rank < 0 && initialized() && !finalized()) {
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    if (rank >= 0)
      std::fprintf(stderr, "ddunet rank %d of %d: error: %s\n", rank, size, what);
    else
      std::fprintf(stderr, "ddunet rank ? of ?: error: %s\n", what);
    std::fflush(stderr);
    if (initialized() && !finalized()) Environment::abort(1);
    std::_Exit(1);
  };
  try {
    Environment env(argc, argv);
    rank = Environment::world_rank();
    size = Environment::world_size();
    try {
      return static_cast<int>(std::forward<Fn>(body)());
    } catch (const std::exception& e) {
      report(e.what());  // aborts before env's destructor could try to finalise
    } catch (...) {
      report("unknown exception");
    }
  } catch (const std::exception& e) {  // from initialisation or finalisation
    report(e.what());
  } catch (...) {
    report("unknown exception");
  }
  return 1;  // not reached: report() does not return
}

}  // namespace dd::mpi
