// The scheduler of the emulated CUDA kernels (src/cuda/emulation.cuh): the blocks of a launch run one
// after another on the calling thread; the threads of a block are fibers with stacks of their own,
// switched at __syncthreads by a few lines of x86-64 assembly (ucontext's switch makes a system call
// each time, and a U-Net batch norm's finishing kernel switches millions of times).
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulated_runtime.hpp"
#include "emulation.cuh"

// dd_emulated_switch(save, to): saves the callee-saved registers on the current stack, stores the
// stack pointer in *save, continues on the stack `to` (as saved by an earlier switch, or prepared by
// start_fiber) with its registers. The System V ABI makes everything else caller-saved.
asm(R"(
  .text
  .globl dd_emulated_switch
  .type dd_emulated_switch, @function
dd_emulated_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dd_emulated_switch, .-dd_emulated_switch
)");
extern "C" void dd_emulated_switch(void** save, void* to);

namespace dd::cuda::emulation {
namespace {

constexpr std::size_t kMaxDynamicShared = 48 * 1024;  // without the opt-in attribute
constexpr std::size_t kStack = 128 * 1024;            // per thread; untouched pages cost nothing
constexpr const char* kDivergentBarrier = "emulated CUDA: __syncthreads reached by some threads of a block only";

struct Scheduler {
  std::vector<void*> sp;  // saved stack pointer of each thread of the block
  std::vector<char> done;
  std::vector<std::unique_ptr<char[]>> stacks;
  void* scheduler_sp = nullptr;
  const std::function<void()>* body = nullptr;
  unsigned current = 0;
  bool in_fibers = false;     // barriers are legal only while the block runs as fibers
  bool took_barrier = false;  // thread 0 reached a barrier
  std::vector<std::max_align_t> shared;
  std::size_t shared_bytes = 0;
  std::exception_ptr error;  // the first exception of a thread, rethrown by run_grid
};
thread_local Scheduler s;

void set_thread(unsigned t) {
  s.current = t;
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

void run_body() {
  try {
    (*s.body)();
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
  }
}

[[noreturn]] void fiber_main() {
  run_body();
  s.done[s.current] = 1;
  void* dead;
  dd_emulated_switch(&dead, s.scheduler_sp);  // never resumed
  std::terminate();
}

// Thread t's stack, laid out as dd_emulated_switch leaves a suspended one: six registers, then the
// address fiber_main starts at, then a null return address for it (16-byte aligned as after a call).
void start_fiber(unsigned t) {
  if (!s.stacks[t]) s.stacks[t] = std::make_unique_for_overwrite<char[]>(kStack);
  auto top = reinterpret_cast<std::uintptr_t>(s.stacks[t].get() + kStack) & ~std::uintptr_t{15};
  auto* frame = reinterpret_cast<void**>(top) - 8;
  for (int r = 0; r < 6; ++r) frame[r] = nullptr;
  frame[6] = reinterpret_cast<void*>(&fiber_main);
  frame[7] = nullptr;
  s.sp[t] = frame;
}

void resume(unsigned t) {
  set_thread(t);
  dd_emulated_switch(&s.scheduler_sp, s.sp[t]);
}

void run_block(unsigned threads) {
  s.sp.assign(threads, nullptr);
  s.done.assign(threads, 0);
  if (s.stacks.size() < threads) s.stacks.resize(threads);
  s.took_barrier = false;
  s.in_fibers = true;
  start_fiber(0);
  resume(0);
  if (!s.took_barrier) {  // thread 0 took no barrier, so none may: the rest as plain calls
    s.in_fibers = false;
    for (unsigned t = 1; t < threads && !s.error; ++t) {
      set_thread(t);
      run_body();
    }
    return;
  }
  for (unsigned t = 1; t < threads; ++t) start_fiber(t), resume(t);  // each to the first barrier
  // Every live thread now waits at the same barrier: all go on to the next one (or finish).
  for (;;) {
    unsigned finished = 0;
    for (unsigned t = 0; t < threads; ++t) finished += s.done[t];
    if (finished == threads) break;
    if (finished != 0 || s.error) {  // the waiting fibers are abandoned; their stacks are reused
      if (!s.error) s.error = std::make_exception_ptr(std::logic_error(kDivergentBarrier));
      break;
    }
    for (unsigned t = 0; t < threads; ++t) resume(t);
  }
  s.in_fibers = false;
}

void check_launch(dim3 grid, dim3 block, std::size_t shared) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64)
    throw std::logic_error("emulated CUDA: invalid block shape (" + std::to_string(threads) + " threads)");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    throw std::logic_error("emulated CUDA: invalid grid shape");
  if (shared > kMaxDynamicShared)
    throw std::logic_error("emulated CUDA: " + std::to_string(shared) + " bytes of dynamic shared memory");
}

}  // namespace

void run_grid(dim3 grid, dim3 block, std::size_t shared, const std::function<void()>& body) {
  check_launch(grid, block, shared);
  if (s.body) throw std::logic_error("emulated CUDA: a kernel launched a kernel");
  DeviceWork work;
  gridDim = grid;
  blockDim = block;
  s.shared.assign((shared + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t), {});
  s.shared_bytes = shared;
  s.error = nullptr;
  s.body = &body;
  const unsigned threads = block.x * block.y * block.z;
  for (unsigned z = 0; z < grid.z && !s.error; ++z)
    for (unsigned y = 0; y < grid.y && !s.error; ++y)
      for (unsigned x = 0; x < grid.x && !s.error; ++x) {
        blockIdx.x = x, blockIdx.y = y, blockIdx.z = z;
        run_block(threads);
      }
  s.body = nullptr;
  if (s.error) std::rethrow_exception(std::exchange(s.error, nullptr));
}

void enqueue_grid(cudaStream_t st, dim3 grid, dim3 block, std::size_t shared, std::function<void()> body) {
  check_launch(grid, block, shared);
  enqueue(st, [grid, block, shared, body = std::move(body)] { run_grid(grid, block, shared, body); });
}

void barrier() {
  if (!s.in_fibers) throw std::logic_error(kDivergentBarrier);
  if (s.current == 0) s.took_barrier = true;
  dd_emulated_switch(&s.sp[s.current], s.scheduler_sp);
}

void* dynamic_shared_memory(std::size_t bytes) {
  if (bytes > s.shared_bytes)
    throw std::logic_error("emulated CUDA: the kernel uses more dynamic shared memory than its launch gave");
  return s.shared.data();
}

}  // namespace dd::cuda::emulation
