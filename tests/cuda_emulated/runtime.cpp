// The CUDA runtime on host memory, for the emulated GPU (src/cuda/emulation.cuh): "device" memory is
// mapped host pages (the kernel tests read it directly); streams are queues run in order, eagerly
// (every launch and copy runs when it is made) or deferred until something waits for them
// (defer_streams: the GPU test suite), so that missing stream waits change results; events mark a
// place in a stream and hold a host time. One device with 16 GiB.
// Every allocation sits between inaccessible pages with guard bytes in the slack, checked when it is
// freed and by the tests; with forbid_host_access() it is open only during device work (kernels,
// copies, cuDNN and NCCL calls), so host code that dereferences a device pointer faults.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <execinfo.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "emulated_runtime.hpp"

// A stream: its work not yet run, in order, and how many items were enqueued and have run. An item
// is work, or a wait for another stream's first `upto` items (cudaStreamWaitEvent).
struct CUstream_st {
  struct Item {
    std::function<void()> work;
    CUstream_st* source = nullptr;
    std::uint64_t upto = 0;
  };
  std::deque<Item> queue;
  std::uint64_t enqueued = 0, done = 0;
};
// An event: the place in a stream where it was recorded (null stream: nothing to wait for).
struct CUevent_st {
  std::chrono::steady_clock::time_point t;
  bool timing = true;
  CUstream_st* stream = nullptr;
  std::uint64_t upto = 0;
};
struct CUmemPoolHandle_st {
  std::uint64_t release_threshold = 0;
};

namespace dd::cuda::emulation {
bool is_device_memory(const void* p);
}
namespace emu = dd::cuda::emulation;

namespace {
// The entry of a map from allocation start to allocation whose bytes hold p, or m.end().
template <class Map, class Bytes>
auto containing(Map& m, const void* p, Bytes bytes_of) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto it = m.upper_bound(a);
  if (it == m.begin()) return m.end();
  --it;
  return a < it->first + std::max<std::size_t>(bytes_of(it->second), 1) ? it : m.end();
}

constexpr std::size_t kAlign = 256;  // cudaMalloc's alignment
constexpr unsigned char kGuardByte = 0xA5;
constexpr std::size_t kDeviceBytes = std::size_t{16} << 30;

// An allocation: an inaccessible page, the data pages (the data ends 256-byte aligned at their end,
// so an overrun reaches the next page soon; the slack on both sides holds guard bytes), an
// inaccessible page.
struct Block {
  unsigned char* map;  // mmap'd start
  std::size_t map_bytes, bytes;
  unsigned char* data_pages() const { return map + page(); }
  std::size_t data_page_bytes() const { return map_bytes - 2 * page(); }
  static std::size_t page() {
    static const std::size_t p = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return p;
  }
};

struct Memory {
  std::mutex m;
  std::map<std::uintptr_t, Block> live;  // data start -> block
  std::size_t used = 0;
  std::int64_t violations = 0;
  int key = -1;  // the protection key of device memory once the host is kept out of it
};
Memory& memory() {
  static Memory mem;
  return mem;
}
thread_local int device_depth = 0;  // nesting of device work on this thread (a cuDNN call in a launch, ...)

bool guards_intact(std::uintptr_t start, const Block& b) {
  const unsigned char* d = b.data_pages();
  const auto* p = reinterpret_cast<const unsigned char*>(start);
  for (const unsigned char* q = d; q < p; ++q)
    if (*q != kGuardByte) return false;
  for (const unsigned char* q = p + b.bytes; q < d + b.data_page_bytes(); ++q)
    if (*q != kGuardByte) return false;
  return true;
}
// Device memory carries a protection key (a per-thread permission the CPU checks on every access,
// switched without a system call), so shutting the host out around each piece of device work is cheap.
void open_device_memory(bool open) {
  const int key = memory().key;
  if (key >= 0) pkey_set(key, open ? 0 : PKEY_DISABLE_ACCESS);
}
// Opens device memory for the runtime's own reads (guard checks) on this thread.
struct RuntimeAccess {
  RuntimeAccess() { open_device_memory(true); }
  ~RuntimeAccess() { open_device_memory(device_depth > 0); }
};

// A fault on device memory outside device work: the host dereferenced a device pointer, which on a
// GPU reads garbage or crashes. Says where, then dies (as the GPU program would, less helpfully).
void on_fault(int, siginfo_t* info, void*) {
  const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
  const char* what = "emulated GPU: segmentation fault outside device memory\n";
  for (auto& [start, b] : memory().live) {  // (no lock: the process ends here)
    const auto lo = reinterpret_cast<std::uintptr_t>(b.map), hi = lo + b.map_bytes;
    if (a >= lo && a < hi) {
      what = a >= start && a < start + b.bytes ? "emulated GPU: the HOST touched DEVICE memory (a device pointer "
                                                 "dereferenced in host code)\n"
                                               : "emulated GPU: access just outside a device allocation\n";
      break;
    }
  }
  (void)!write(2, what, std::strlen(what));
  void* frames[64];
  backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
  std::_Exit(139);
}

thread_local cudaError_t last_error = cudaSuccess;
cudaError_t result(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}
CUmemPoolHandle_st pool;

// Pinned host allocations (cudaHostAlloc): start -> bytes. Copies from or to them never make the host wait.
std::mutex pinned_mutex;
std::map<std::uintptr_t, std::size_t> pinned;
bool is_pinned(const void* p) {
  std::lock_guard lock(pinned_mutex);
  return containing(pinned, p, [](std::size_t bytes) { return bytes; }) != pinned.end();
}

std::atomic<std::int64_t> waits{0};
// A copy the host waits for on a GPU: into pageable host memory (it returns when done), or from
// pageable host memory into device memory (the driver may wait for the stream to stage it).
void count_copy_wait(void* dst, const void* src) {
  const bool to_device = emu::is_device_memory(dst), from_device = emu::is_device_memory(src);
  if ((from_device && !to_device && !is_pinned(dst)) || (to_device && !from_device && !is_pinned(src))) ++waits;
}
void copy_bytes(void* dst, const void* src, std::size_t bytes) {
  emu::DeviceWork work;
  if (bytes) std::memmove(dst, src, bytes);
}

// ---- stream queues ----
struct Queues {
  std::recursive_mutex m;  // every queue, and the work run from them
  bool deferred = false;
  CUstream_st legacy;  // never holds work: it runs at once
  // Every stream created; destroyed ones stay (events recorded on them may still be waited for).
  std::vector<std::unique_ptr<CUstream_st>> streams;
};
Queues& queues() {  // (built on first use: the programs' static initialisers call defer_streams)
  static Queues q;
  return q;
}

CUstream_st* stream_of(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread ? &queues().legacy : s;
}
// Runs s's work until its first `upto` items have run; a wait item first runs its source's.
void drain(CUstream_st* s, std::uint64_t upto) {
  while (s->done < upto && !s->queue.empty()) {
    CUstream_st::Item item = std::move(s->queue.front());
    s->queue.pop_front();
    ++s->done;  // (an item that throws has run: the stream goes on with the next)
    if (item.source) {
      drain(item.source, item.upto);
    } else {
      emu::DeviceWork work;
      item.work();
    }
  }
}
void drain_all() {
  for (auto& s : queues().streams) drain(s.get(), s->enqueued);
}
// Runs everything enqueued on s so far; the legacy stream waits for every stream (conservatively:
// the library's streams are non-blocking, which the legacy stream would not wait for).
void drain(CUstream_st* s) {
  if (s == &queues().legacy)
    drain_all();
  else
    drain(s, s->enqueued);
}
void synchronize_device() {
  std::lock_guard lock(queues().m);
  drain_all();
}
// Runs work after everything enqueued so far on s (the host waits for it).
void run_in_order(cudaStream_t st, const std::function<void()>& work) {
  std::lock_guard lock(queues().m);
  drain(stream_of(st));
  emu::DeviceWork device;
  work();
}
}  // namespace

namespace dd::cuda::emulation {
void* device_alloc(std::size_t bytes) {
  Memory& mem = memory();
  std::lock_guard lock(mem.m);
  if (bytes > kDeviceBytes - mem.used) return nullptr;
  const std::size_t page = Block::page(), rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  const std::size_t data_pages = (rounded + page - 1) / page * page;
  void* map = mmap(nullptr, data_pages + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return nullptr;
  Block b{static_cast<unsigned char*>(map), data_pages + 2 * page, bytes};
  pkey_mprotect(b.data_pages(), b.data_page_bytes(), PROT_READ | PROT_WRITE, mem.key);  // key -1: plain mprotect
  unsigned char* start = b.data_pages() + data_pages - rounded;
  RuntimeAccess access;
  std::memset(b.data_pages(), kGuardByte, data_pages);
  std::memset(start, 0xFF, bytes);  // NaN floats: reading what was never written shows
  mem.live[reinterpret_cast<std::uintptr_t>(start)] = b;
  mem.used += bytes;
  return start;
}
void device_free(void* p) {
  if (!p) return;
  Memory& mem = memory();
  std::lock_guard lock(mem.m);
  auto it = mem.live.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == mem.live.end()) {
    ++mem.violations;  // not ours, or freed twice
    return;
  }
  {
    RuntimeAccess access;
    if (!guards_intact(it->first, it->second)) ++mem.violations;
  }
  mem.used -= it->second.bytes;
  munmap(it->second.map, it->second.map_bytes);
  mem.live.erase(it);
}
bool is_device_memory(const void* p) {
  Memory& mem = memory();
  std::lock_guard lock(mem.m);
  return containing(mem.live, p, [](const Block& b) { return b.bytes; }) != mem.live.end();
}
std::int64_t guard_violations() {
  Memory& mem = memory();
  std::lock_guard lock(mem.m);
  std::int64_t v = mem.violations;
  RuntimeAccess access;
  for (auto& [p, b] : mem.live) v += !guards_intact(p, b);
  return v;
}
std::int64_t host_waits() {
  return waits.load();
}
std::int64_t live_allocations() {
  Memory& mem = memory();
  std::lock_guard lock(mem.m);
  return static_cast<std::int64_t>(mem.live.size());
}
bool forbid_host_access() {
  Memory& mem = memory();
  std::lock_guard lock(mem.m);
  if (mem.key >= 0) return true;
  const int key = pkey_alloc(0, 0);
  if (key < 0) return false;  // no protection keys (CPU or kernel): host accesses go unnoticed
  for (auto& [p, b] : mem.live) pkey_mprotect(b.data_pages(), b.data_page_bytes(), PROT_READ | PROT_WRITE, key);
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, nullptr);
  mem.key = key;
  open_device_memory(device_depth > 0);
  return true;
}
bool defer_streams() {
  const char* eager = std::getenv("DD_EMULATED_EAGER");
  if (eager && *eager && std::strcmp(eager, "0") != 0) return false;
  std::lock_guard lock(queues().m);
  queues().deferred = true;
  return true;
}
bool streams_deferred() {
  return queues().deferred;
}
void enqueue(cudaStream_t st, std::function<void()> work) {
  CUstream_st* s = stream_of(st);
  if (!queues().deferred || s == &queues().legacy) {
    run_in_order(st, work);
    return;
  }
  std::lock_guard lock(queues().m);
  s->queue.push_back({std::move(work)});
  ++s->enqueued;
}
std::int64_t pending_work() {
  std::lock_guard lock(queues().m);
  std::int64_t n = 0;
  for (auto& s : queues().streams) n += static_cast<std::int64_t>(s->queue.size());
  return n;
}
DeviceWork::DeviceWork() {
  if (device_depth++ == 0) open_device_memory(true);
}
DeviceWork::~DeviceWork() {
  if (--device_depth == 0) open_device_memory(false);
}
}  // namespace dd::cuda::emulation

extern "C" {
// ---- errors and devices ----
cudaError_t cudaGetLastError(void) {
  return std::exchange(last_error, cudaSuccess);
}
cudaError_t cudaPeekAtLastError(void) {
  return last_error;
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    default:
      return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorNotReady:
      return "device not ready";
    default:
      return "unknown error (emulated runtime)";
  }
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return result(device == 0 ? cudaSuccess : cudaErrorInvalidDevice);
}
cudaError_t cudaDeviceSynchronize(void) {
  ++waits;
  synchronize_device();
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return result(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::strcpy(prop->name, "emulated GPU (host memory)");
  prop->totalGlobalMem = kDeviceBytes;
  prop->major = 9;
  prop->multiProcessorCount = 1;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *total = kDeviceBytes;
  *free_bytes = kDeviceBytes;  // (not tracked across the caching allocator's blocks)
  return cudaSuccess;
}
cudaError_t cudaProfilerStart(void) {
  return cudaSuccess;
}
cudaError_t cudaProfilerStop(void) {
  return cudaSuccess;
}

// ---- memory ----
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = emu::device_alloc(bytes);
  return result(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* p) {  // synchronises the device first, as CUDA's does
  synchronize_device();
  emu::device_free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  return cudaMalloc(p, bytes);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {  // in stream order
  emu::enqueue(s, [p] { emu::device_free(p); });
  return cudaSuccess;
}
// An asynchronous copy: from pageable host memory the bytes are staged when it is made (the call
// returns once they are); into pageable host memory it returns when done; otherwise (device memory,
// pinned host memory) it runs in stream order, reading and writing when it gets there.
cudaError_t copy_async(void* dst, const void* src, size_t width, size_t height, size_t dpitch, size_t spitch,
                       cudaStream_t s) {
  count_copy_wait(dst, src);
  const bool to_device = emu::is_device_memory(dst), from_device = emu::is_device_memory(src);
  auto rows = [=](const void* from, size_t from_pitch) {
    return [=] {
      for (size_t r = 0; r < height; ++r)
        std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(from) + r * from_pitch, width);
    };
  };
  if (!to_device && (!from_device || !is_pinned(dst))) {  // into host memory the host waits for
    run_in_order(s, rows(src, spitch));
  } else if (to_device && !from_device && !is_pinned(src)) {
    auto staged = std::make_shared<std::vector<char>>(width * height);
    for (size_t r = 0; r < height; ++r)
      std::memcpy(staged->data() + r * width, static_cast<const char*>(src) + r * spitch, width);
    emu::enqueue(s, [staged, f = rows(staged->data(), width)] { f(); });
  } else {
    emu::enqueue(s, rows(src, spitch));
  }
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  if (bytes == 0) return cudaSuccess;
  return copy_async(dst, src, bytes, 1, bytes, bytes, s);
}
// On the legacy stream, which the library's (non-blocking) streams do not wait for, nor it for them:
// the copy runs now, whatever they still have to do.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  ++waits;  // synchronous: one wait, whatever the memory
  copy_bytes(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t s) {
  if (width > dpitch || width > spitch) return result(cudaErrorInvalidValue);
  if (width == 0 || height == 0) return cudaSuccess;
  return copy_async(dst, src, width, height, dpitch, spitch, s);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
  *p = std::aligned_alloc(kAlign, (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign);
  if (!*p) return result(cudaErrorMemoryAllocation);
  std::lock_guard lock(pinned_mutex);
  pinned[reinterpret_cast<std::uintptr_t>(*p)] = std::max<size_t>(bytes, 1);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  return cudaHostAlloc(p, bytes, 0);
}
cudaError_t cudaFreeHost(void* p) {  // synchronises the device first, as CUDA's does
  synchronize_device();
  std::lock_guard lock(pinned_mutex);
  if (p && !pinned.erase(reinterpret_cast<std::uintptr_t>(p))) return result(cudaErrorInvalidValue);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  emu::enqueue(s, [=] { std::memset(p, value, bytes); });
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  *a = cudaPointerAttributes{};
  a->type = emu::is_device_memory(p) ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
  a->device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* p, int device) {
  if (device != 0) return result(cudaErrorInvalidDevice);
  *p = &pool;
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t p, cudaMemPoolAttr attr, void* value) {
  if (p != &pool || attr != cudaMemPoolAttrReleaseThreshold) return result(cudaErrorInvalidValue);
  std::memcpy(&p->release_threshold, value, sizeof(std::uint64_t));
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t p, cudaMemPoolAttr attr, void* value) {
  if (p != &pool || attr != cudaMemPoolAttrReleaseThreshold) return result(cudaErrorInvalidValue);
  std::memcpy(value, &p->release_threshold, sizeof(std::uint64_t));
  return cudaSuccess;
}

// ---- streams and events ----
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  std::lock_guard lock(queues().m);
  queues().streams.push_back(std::make_unique<CUstream_st>());
  *s = queues().streams.back().get();
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  return cudaStreamCreateWithFlags(s, 0);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {  // its work still runs (here: now)
  if (!s) return result(cudaErrorInvalidValue);
  std::lock_guard lock(queues().m);
  drain(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  ++waits;
  std::lock_guard lock(queues().m);
  drain(stream_of(s));
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {  // "done", having run its work (a poll must end)
  std::lock_guard lock(queues().m);
  drain(stream_of(s));
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (!e) return result(cudaErrorInvalidValue);
  std::lock_guard lock(queues().m);
  CUstream_st* waiter = stream_of(s);
  if (!e->stream || e->stream == waiter) return cudaSuccess;
  if (!queues().deferred || waiter == &queues().legacy) {
    drain(e->stream, e->upto);
    return cudaSuccess;
  }
  waiter->queue.push_back({{}, e->stream, e->upto});
  ++waiter->enqueued;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  *e = new CUevent_st{std::chrono::steady_clock::now(), (flags & cudaEventDisableTiming) == 0};
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  return cudaEventCreateWithFlags(e, 0);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {  // waits made on it keep their place
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!e) return result(cudaErrorInvalidValue);
  std::lock_guard lock(queues().m);
  CUstream_st* st = stream_of(s);
  const bool legacy = st == &queues().legacy;
  if (e->timing || legacy) drain(st);  // timing: the work before it runs now; legacy: all work before it
  e->stream = legacy ? nullptr : st;
  e->upto = st->enqueued;
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  ++waits;
  if (!e) return result(cudaErrorInvalidValue);
  std::lock_guard lock(queues().m);
  if (e->stream) drain(e->stream, e->upto);
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {  // a question only: the work before the event is not run
  if (!e) return result(cudaErrorInvalidValue);
  std::lock_guard lock(queues().m);
  return e->stream && e->stream->done < e->upto ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!start || !end) return result(cudaErrorInvalidValue);
  *ms = std::chrono::duration<float, std::milli>(end->t - start->t).count();
  return cudaSuccess;
}
}
