// cuda_emu.h - CPU emulation of the CUDA execution model (header-only).
//
// Include through emu/portability.cuh with AX_EMULATE_CUDA defined;
// never include it in code compiled by nvcc. See emu/README.md.
//
// Model: the blocks of a grid run one after another (in a seeded random
// order); the threads of a block run as cooperative fibers on the calling
// host thread. A fiber runs until it reaches a synchronisation point
// (__syncthreads, a warp collective) or exits; the ready fibers are picked in
// a seeded random order. Barriers and warp collectives are real rendezvous
// and are checked for divergence / deadlock, which is reported by throwing
// ax_emu::EmulationError from the launch (never hangs, never aborts).
#pragma once

#if defined(__CUDACC__)
#error "emu/cuda_emu.h is the host-compiler emulation; nvcc must not include it"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <dlfcn.h>
#include <elf.h>
#include <sys/mman.h>
#include <unistd.h>

// ---------------------------------------------------------------------------
// CUDA host headers: dim3/uint3/float4..., __half, __nv_bfloat16 and the
// host-callable conversion intrinsics. They also define __device__,
// __global__, __host__, __forceinline__, __align__ ... for host compilers.
// ---------------------------------------------------------------------------
#if !defined(AX_EMU_NO_CUDA_HEADERS) && __has_include(<cuda_fp16.h>) && __has_include(<cuda_bf16.h>)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define AX_EMU_HAS_CUDA_HEADERS 1
#else
#define AX_EMU_HAS_CUDA_HEADERS 0
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
#endif

#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __global__
#define __global__
#endif
#ifndef __shared__
#define __shared__
#endif
#ifndef __constant__
#define __constant__
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
// __launch_bounds__(max_threads[, min_blocks]): on x86-64 GCC/Clang the bound is kept in the function
// itself as ceil(max_threads / 32) one-byte NOPs at its entry (patchable_function_entry), which the
// launch reads back to refuse a block larger than the bound (launch_bound_of). Elsewhere it is ignored.
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 8))
#define AX_EMU_LAUNCH_BOUNDS_CHECKED 1
#define AX_EMU_LB_FIRST_(n, ...) (n)
#define __launch_bounds__(...) \
  __attribute__((patchable_function_entry((AX_EMU_LB_FIRST_(__VA_ARGS__, 0) + 31) / 32, 0)))
#else
#define AX_EMU_LAUNCH_BOUNDS_CHECKED 0
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif

// ---------------------------------------------------------------------------
// Sanitizer / context-switch configuration
// ---------------------------------------------------------------------------
#if defined(__SANITIZE_ADDRESS__)
#define AX_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AX_EMU_ASAN 1
#endif
#endif
#ifndef AX_EMU_ASAN
#define AX_EMU_ASAN 0
#endif
#if AX_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && !defined(AX_EMU_USE_UCONTEXT)
#define AX_EMU_CTX_ASM 1
#else
#define AX_EMU_CTX_ASM 0
#include <ucontext.h>
#endif

#if AX_EMU_CTX_ASM
// Minimal x86-64 SysV context switch. Emitted in a COMDAT group so that any
// number of translation units may include this header.
//   ax_emu_ctx_switch_v1(void** save_sp, void* load_sp)
//   ax_emu_fiber_start_v1: first "return address" of a new fiber; calls r13(r12).
__asm__(
    ".pushsection .text.ax_emu_ctx_switch_v1,\"axG\",@progbits,ax_emu_ctx_switch_v1,comdat\n"
    ".weak ax_emu_ctx_switch_v1\n"
    ".hidden ax_emu_ctx_switch_v1\n"
    ".type ax_emu_ctx_switch_v1,@function\n"
    ".p2align 4\n"
    "ax_emu_ctx_switch_v1:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size ax_emu_ctx_switch_v1, .-ax_emu_ctx_switch_v1\n"
    ".weak ax_emu_fiber_start_v1\n"
    ".hidden ax_emu_fiber_start_v1\n"
    ".type ax_emu_fiber_start_v1,@function\n"
    ".p2align 4\n"
    "ax_emu_fiber_start_v1:\n"
    "  movq %r12, %rdi\n"
    "  callq *%r13\n"
    "  ud2\n"
    ".size ax_emu_fiber_start_v1, .-ax_emu_fiber_start_v1\n"
    ".popsection\n");
extern "C" __attribute__((visibility("hidden"))) void ax_emu_ctx_switch_v1(void** save_sp, void* load_sp);
extern "C" __attribute__((visibility("hidden"))) void ax_emu_fiber_start_v1();
#endif

namespace ax_emu {

// Thrown by launches for every problem the emulator detects (invalid launch
// configuration, barrier/warp divergence, deadlock, shared-memory limits, ...).
class __attribute__((visibility("default"))) EmulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ax_emu

// Everything below is internal to the including shared object (a Python
// extension must not interpose its emulator state with another one's).
#pragma GCC visibility push(hidden)

#include "checker.h"

namespace ax_emu {

namespace detail {

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kStaticSmemLimit = 48 * 1024;     // static __shared__ limit
constexpr size_t kMaxSmemPerBlock = 227 * 1024;    // H100 opt-in maximum
constexpr size_t kDefaultDynamicSmem = 48 * 1024;  // dynamic shared memory without the opt-in
constexpr uint64_t kDefaultSeed = 0x5EEDull;

struct Site {
  const char* file;
  int line;
};
inline bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}
inline std::string site_str(const Site& s) {
  const char* f = s.file ? s.file : "?";
  const char* slash = std::strrchr(f, '/');
  return std::string(slash ? slash + 1 : f) + ":" + std::to_string(s.line);
}

// Per-host-thread configuration.
struct Config {
  bool seed_override = false;
  uint64_t seed = kDefaultSeed;
  int shuffle_override = -1;  // -1: env, 0: off, 1: on
  bool log_launches = false;  // record the kernel names launched (start_launch_log)
  std::vector<std::string> launch_log;
  const void* current_stream = nullptr;  // launches must use it (set_current_stream)
  uint64_t block_sample = 0;             // run at most this many blocks per launch (0: all)
  bool metrics = false;                  // record memory metrics (checked builds)
  std::vector<MetricRow> metric_rows;
  std::vector<uint64_t> metric_sites;                                 // site of each row
  std::map<std::pair<std::string, uint64_t>, size_t> metric_index;  // (kernel, site) -> row
};
inline Config& config() {
  static thread_local Config c;
  return c;
}
inline uint64_t env_seed() {
  const char* s = std::getenv("AX_EMU_SEED");
  if (s && *s) return std::strtoull(s, nullptr, 0);
  return kDefaultSeed;
}
inline bool env_shuffle() {
  const char* s = std::getenv("AX_EMU_SHUFFLE");
  return !(s && s[0] == '0');
}

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
struct Rng {
  uint64_t s = 1;
  void seed(uint64_t v) { s = splitmix64(v) | 1; }
  uint64_t next() {  // xorshift64*
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  size_t below(size_t n) { return static_cast<size_t>(((next() >> 32) * static_cast<uint64_t>(n)) >> 32); }
};

// ---------------------------------------------------------------------------
// Fiber stacks: mmap'd, with a PROT_NONE guard page, reused across blocks.
// ---------------------------------------------------------------------------
struct Stack {
  char* map = nullptr;
  size_t map_size = 0;
  char* lo = nullptr;  // usable region [lo, lo + size)
  size_t size = 0;
};

class StackPool {
 public:
  StackPool() {
    size_t kb = 256;
    if (const char* s = std::getenv("AX_EMU_STACK_KB")) {
      long v = std::strtol(s, nullptr, 10);
      if (v >= 32) kb = static_cast<size_t>(v);
    }
    long pg = sysconf(_SC_PAGESIZE);
    page_ = pg > 0 ? static_cast<size_t>(pg) : 4096;
    size_ = (kb * 1024 + page_ - 1) / page_ * page_;
  }
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  ~StackPool() {
    for (Stack& s : stacks_) {
#if AX_EMU_ASAN
      __asan_unpoison_memory_region(s.lo, s.size);
#endif
      munmap(s.map, s.map_size);
    }
  }
  Stack& get(size_t i) {
    while (stacks_.size() <= i) {
      Stack s;
      s.map_size = size_ + page_;
      void* p = mmap(nullptr, s.map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw EmulationError("ax_emu: mmap of a fiber stack failed");
      s.map = static_cast<char*>(p);
      mprotect(s.map, page_, PROT_NONE);  // guard page below the stack
      s.lo = s.map + page_;
      s.size = size_;
      stacks_.push_back(s);
    }
    return stacks_[i];
  }

 private:
  std::vector<Stack> stacks_;
  size_t size_ = 0, page_ = 4096;
};
inline StackPool& stack_pool() {
  static thread_local StackPool pool;
  return pool;
}

struct Context {
#if AX_EMU_CTX_ASM
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

#if !AX_EMU_CTX_ASM
[[noreturn]] inline void fiber_main(void* arg);
inline void uc_trampoline(unsigned lo, unsigned hi) {
  uintptr_t p = (static_cast<uintptr_t>(hi) << 32) | static_cast<uintptr_t>(lo);
  fiber_main(reinterpret_cast<void*>(p));
}
#endif

inline void ctx_init(Context& c, Stack& st, void (*fn)(void*), void* arg) {
  const size_t kTop = 8192;
#if AX_EMU_ASAN
  // The previous fiber on this stack never returned from its entry frame.
  __asan_unpoison_memory_region(st.lo + st.size - kTop, kTop);
#else
  (void)kTop;
#endif
#if AX_EMU_CTX_ASM
  uintptr_t top = (reinterpret_cast<uintptr_t>(st.lo) + st.size) & ~static_cast<uintptr_t>(15);
  uintptr_t* sp = reinterpret_cast<uintptr_t*>(top - 72);  // sp = 8 (mod 16)
  sp[0] = 0;                                               // r15
  sp[1] = 0;                                               // r14
  sp[2] = reinterpret_cast<uintptr_t>(fn);                 // r13: entry function
  sp[3] = reinterpret_cast<uintptr_t>(arg);                // r12: its argument
  sp[4] = 0;                                               // rbx
  sp[5] = 0;                                               // rbp (terminates frame chains)
  sp[6] = reinterpret_cast<uintptr_t>(&ax_emu_fiber_start_v1);
  sp[7] = 0;
  sp[8] = 0;
  c.sp = sp;
#else
  (void)fn;
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = st.lo;
  c.uc.uc_stack.ss_size = st.size;
  c.uc.uc_link = nullptr;
  uintptr_t p = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(&uc_trampoline), 2, static_cast<unsigned>(p & 0xffffffffu),
              static_cast<unsigned>(p >> 32));
#endif
}

inline void ctx_switch(Context& from, Context& to) {
#if AX_EMU_CTX_ASM
  ax_emu_ctx_switch_v1(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

// ---------------------------------------------------------------------------
// Emulation state
// ---------------------------------------------------------------------------
enum class TState : uint8_t { Ready, Running, Barrier, Warp, Done };

enum class WOp : uint8_t { SyncWarp, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, MmaBf16, MmaF16, LdMatrixX4, LdMatrixX4Trans };

inline const char* wop_name(WOp op) {
  switch (op) {
    case WOp::SyncWarp: return "__syncwarp";
    case WOp::Shfl: return "__shfl_sync";
    case WOp::ShflUp: return "__shfl_up_sync";
    case WOp::ShflDown: return "__shfl_down_sync";
    case WOp::ShflXor: return "__shfl_xor_sync";
    case WOp::Ballot: return "__ballot_sync";
    case WOp::Any: return "__any_sync";
    case WOp::All: return "__all_sync";
    case WOp::MmaBf16: return "ax::mma_m16n8k16_bf16";
    case WOp::MmaF16: return "ax::mma_m16n8k16_f16";
    case WOp::LdMatrixX4: return "ax::ldmatrix_x4";
    case WOp::LdMatrixX4Trans: return "ax::ldmatrix_x4_trans";
  }
  return "?";
}

enum class BarKind : uint8_t { Plain, Count, And, Or };

struct WarpRec {
  WOp op = WOp::SyncWarp;
  uint32_t mask = 0, eff = 0;
  Site site{nullptr, 0};
  uint64_t val = 0, result = 0;
  int arg = 0, width = 32;
  unsigned vsize = 0;
  const void* p0 = nullptr;
  const void* p1 = nullptr;
  const void* p2 = nullptr;
  void* out = nullptr;
};

struct CpCopy {
  void* dst;
  uint64_t group;
  unsigned char bytes[16];
};

struct ThreadCtx {
  Context ctx;
  Stack stack;  // copy of the pool entry (the pool's vector may grow)
  uint3 tid{0, 0, 0};
  unsigned linear = 0, warp = 0, lane = 0;
  TState state = TState::Ready;
  bool started = false, kill = false;
  BarKind bar_kind = BarKind::Plain;
  Site bar_site{nullptr, 0};
  int bar_pred = 0, bar_result = 0;
  WarpRec w;
  std::vector<CpCopy> cp;
  uint64_t cp_group = 0;
  uint32_t nsync = 0;  // sync points (barriers, warp collectives) this thread has passed in its block
};

// A region of the block's shared-memory arena: the dynamic area or one AX_SHARED variable.
struct SharedAlloc {
  const void* key;  // nullptr for the dynamic area
  char* ptr;
  size_t size;
  const char* name;
};

struct FiberUnwind {};  // unwinds a fiber back to its entry (never escapes)

struct LaunchState {
  const char* kname = "";
  Site launch_site{nullptr, 0};
  dim3 grid, block;
  uint3 block_idx{0, 0, 0};
  unsigned nthreads = 0, nwarps = 0;
  void (*thunk)(void*) = nullptr;
  void* payload = nullptr;
  const void* kfn = nullptr;  // the kernel function
  uint64_t linear_block = 0;
  // Shared memory: one arena per launch, guard | dynamic | guard | static | guard | static ...; regions[0]
  // is the dynamic area. Guards are checked after every block (poisoned for ASan instead).
  char* arena = nullptr;
  size_t arena_cap = 0, arena_top = 0;
  size_t dyn_bytes = 0;
  char* dyn = nullptr;
  std::vector<SharedAlloc> regions;
  size_t static_total = 0;
#if AX_EMU_CHECKED
  CheckState chk;
#endif
  std::unique_ptr<ThreadCtx[]> threads;
  std::vector<uint32_t> warp_arrived, warp_done, warp_exist;
  std::vector<unsigned> ready;
  bool shuffle = true;
  Rng rng;
  Context sched;
  ThreadCtx* cur = nullptr;
  bool failed = false, killing = false;
  std::string error;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;

  ~LaunchState() {
    if (arena) {
#if AX_EMU_ASAN
      __asan_unpoison_memory_region(arena, arena_cap);
#endif
      ::operator delete(arena, std::align_val_t(16));
    }
  }
  ThreadCtx& thread(unsigned w, unsigned lane) { return threads[w * 32 + lane]; }
};

struct Tls {
  LaunchState* L = nullptr;
  ThreadCtx* cur = nullptr;
};
inline thread_local Tls g_tls;

[[noreturn]] __attribute__((noinline, cold)) inline void not_in_kernel(const char* what) {
  throw EmulationError(std::string("ax_emu: ") + what + " used outside of an emulated kernel launch");
}
inline ThreadCtx& cur_thread(const char* what = "threadIdx") {
  ThreadCtx* t = g_tls.cur;
  if (!t) not_in_kernel(what);
  return *t;
}
inline LaunchState& cur_launch(const char* what = "blockIdx") {
  LaunchState* L = g_tls.L;
  if (!L || !g_tls.cur) not_in_kernel(what);
  return *L;
}
inline const uint3& thread_idx() { return cur_thread("threadIdx").tid; }
inline const uint3& block_idx() { return cur_launch("blockIdx").block_idx; }
inline const dim3& block_dim() { return cur_launch("blockDim").block; }
inline const dim3& grid_dim() { return cur_launch("gridDim").grid; }
inline int warp_size() { return 32; }  // deliberately not constexpr (like CUDA's warpSize)

inline std::string u3str(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
inline std::string hex_ptr(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "%p", p);
  return p ? b : "0 (the default stream)";
}
inline std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}
inline std::string context_prefix(const LaunchState& L) {
  return "ax_emu: kernel '" + std::string(L.kname) + "' (launched at " + site_str(L.launch_site) + "), block " +
         u3str(L.block_idx) + ": ";
}

inline void record_error(LaunchState& L, const std::string& msg) {
  if (L.failed) return;
  L.failed = true;
  L.error = context_prefix(L) + msg;
}

// Called from kernel (fiber) context: record the error and unwind this fiber.
[[noreturn]] __attribute__((noinline, cold)) inline void fail(const std::string& msg) {
  LaunchState* L = g_tls.L;
  ThreadCtx* t = g_tls.cur;
  if (!L || !t) throw EmulationError("ax_emu: " + msg + " (outside of an emulated kernel)");
  record_error(*L, msg + " [thread " + u3str(t->tid) + "]");
  throw FiberUnwind{};
}

// Fiber -> scheduler. Returns when the scheduler resumes this fiber.
inline void suspend(LaunchState& L, ThreadCtx& t) {
#if AX_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, L.sched_stack_bottom, L.sched_stack_size);
#endif
  ctx_switch(t.ctx, L.sched);
#if AX_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &L.sched_stack_bottom, &L.sched_stack_size);
#endif
  if (t.kill) throw FiberUnwind{};
}

// Scheduler -> fiber.
inline void resume(LaunchState& L, ThreadCtx& t) {
  t.state = TState::Running;
  t.started = true;
  L.cur = &t;
  g_tls.cur = &t;
#if AX_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t.stack.lo, t.stack.size);
#endif
  ctx_switch(L.sched, t.ctx);
#if AX_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_tls.cur = nullptr;
  L.cur = nullptr;
}

inline std::string lanes_str(uint32_t m) {
  std::string s;
  int n = 0;
  for (uint32_t x = m; x; x &= x - 1) {
    if (n++ == 8) {
      s += ",...";
      break;
    }
    if (!s.empty()) s += ",";
    s += std::to_string(__builtin_ctz(x));
  }
  return "{" + s + "}";
}

inline void on_thread_exit(LaunchState& L, ThreadCtx& t) {
  uint32_t bit = 1u << t.lane;
  L.warp_done[t.warp] |= bit;
  t.cp.clear();
  if (L.failed || L.killing) return;
  uint32_t arrived = L.warp_arrived[t.warp];
  for (uint32_t m = arrived; m; m &= m - 1) {
    const WarpRec& o = L.thread(t.warp, __builtin_ctz(m)).w;
    if (o.eff & bit) {
      record_error(L, "warp divergence: thread " + u3str(t.tid) + " (warp " + std::to_string(t.warp) + ", lane " +
                          std::to_string(t.lane) + ") exited while lane(s) " + lanes_str(arrived) + " wait in " +
                          wop_name(o.op) + " at " + site_str(o.site) + " with mask " + hex32(o.mask));
      return;
    }
  }
}

[[noreturn]] inline void fiber_main(void* arg) {
  ThreadCtx& t = *static_cast<ThreadCtx*>(arg);
  LaunchState& L = *g_tls.L;
#if AX_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &L.sched_stack_bottom, &L.sched_stack_size);
#endif
  if (!t.kill) {
    try {
      L.thunk(L.payload);
    } catch (const FiberUnwind&) {
    } catch (const std::exception& e) {
      record_error(L, std::string("exception escaped kernel code in thread ") + u3str(t.tid) + ": " + e.what());
    } catch (...) {
      record_error(L, "unknown exception escaped kernel code in thread " + u3str(t.tid));
    }
  }
  on_thread_exit(L, t);
  t.state = TState::Done;
#if AX_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, L.sched_stack_bottom, L.sched_stack_size);
#endif
  ctx_switch(t.ctx, L.sched);
  std::abort();  // unreachable: a finished fiber is never resumed
}

inline void fiber_entry(void* arg) { fiber_main(arg); }

// ---------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------
// The region that holds [p, p + n), or nullptr.
inline const SharedAlloc* shared_region(const LaunchState& L, const void* p, size_t n) {
  auto a = reinterpret_cast<uintptr_t>(p);
  for (const SharedAlloc& s : L.regions) {
    auto b = reinterpret_cast<uintptr_t>(s.ptr);
    if (a >= b && a + n <= b + s.size) return &s;
  }
  return nullptr;
}
inline bool in_shared(const LaunchState& L, const void* p, size_t n) { return shared_region(L, p, n) != nullptr; }

// Guard bytes of the shared-memory arena: before the dynamic area and after every region.
constexpr size_t kSmemGuard = 64;
constexpr size_t kMaxSharedVars = 64;

inline void guard_fill(char* p, size_t n) {
  std::memset(p, kGuardByte, n);
#if AX_EMU_ASAN
  __asan_poison_memory_region(p, n);
#endif
}

// Reserves the arena of a launch: the dynamic area now, AX_SHARED variables as the kernel declares them.
inline void shared_arena_init(LaunchState& L, size_t dyn) {
  L.arena_cap = kSmemGuard + (dyn + 15) / 16 * 16 + kSmemGuard + kStaticSmemLimit + kMaxSharedVars * (kSmemGuard + 16);
  L.arena = static_cast<char*>(::operator new(L.arena_cap, std::align_val_t(16)));
  std::memset(L.arena, kGuardByte, L.arena_cap);
  L.dyn = L.arena + kSmemGuard;
  L.dyn_bytes = dyn;
  L.regions.push_back(SharedAlloc{nullptr, L.dyn, dyn, "dynamic shared memory"});
  L.arena_top = kSmemGuard + dyn;
#if AX_EMU_ASAN
  __asan_poison_memory_region(L.arena, L.arena_cap);
  __asan_unpoison_memory_region(L.dyn, dyn);
#endif
}

AX_EMU_NOINSTR inline void* shared_static(const void* key, size_t bytes, size_t align, const char* name, Site site) {
  LaunchState& L = cur_launch("AX_SHARED");
  for (const SharedAlloc& a : L.regions)
    if (a.key == key) return a.ptr;
  size_t al = std::max<size_t>(align, 16);
  size_t total = (L.static_total + al - 1) / al * al + bytes;
  if (total > kStaticSmemLimit)
    fail("static shared memory exceeds the 48 KiB limit: AX_SHARED '" + std::string(name) + "' at " + site_str(site) +
         " (" + std::to_string(bytes) + " bytes) brings the block total to " + std::to_string(total) + " bytes");
  if (total + L.dyn_bytes > kMaxSmemPerBlock)
    fail("static (" + std::to_string(total) + ") + dynamic (" + std::to_string(L.dyn_bytes) +
         ") shared memory exceeds the per-block maximum of " + std::to_string(kMaxSmemPerBlock) + " bytes");
  if (L.regions.size() > kMaxSharedVars)
    fail("more than " + std::to_string(kMaxSharedVars) + " AX_SHARED variables in one kernel");
  const size_t off = (L.arena_top + kSmemGuard + al - 1) / al * al;
  char* p = L.arena + off;
#if AX_EMU_ASAN
  __asan_unpoison_memory_region(p, bytes);
#endif
  std::memset(p, kPoisonByte, bytes);
  L.regions.push_back(SharedAlloc{key, p, bytes, name});
  L.arena_top = off + bytes;
  L.static_total = total;
  return p;
}

// Poisons every region for the next block.
inline void shared_poison(LaunchState& L) {
  for (const SharedAlloc& a : L.regions) std::memset(a.ptr, kPoisonByte, a.size);
}
// Outside ASan: the first guard byte of the arena a block overwrote, described, or "" (regions are in
// address order; every byte between them, and kSmemGuard bytes around them, is guard pattern).
inline std::string shared_guard_damage(const LaunchState& L) {
#if AX_EMU_ASAN
  (void)L;
  return {};
#else
  const char* prev_end = L.arena;
  const SharedAlloc* prev = nullptr;
  auto scan = [&](const char* lo, const char* hi) -> std::string {
    for (const char* p = lo; p < hi; ++p)
      if (static_cast<unsigned char>(*p) != kGuardByte)
        return prev ? "byte " + std::to_string(p - prev_end) + " past the end of " +
                          (prev->key ? "AX_SHARED '" + std::string(prev->name) + "'" : std::string(prev->name)) +
                          " (" + std::to_string(prev->size) + " bytes)"
                    : "byte " + std::to_string(L.dyn - p) + " before the dynamic shared memory";
    return {};
  };
  for (const SharedAlloc& a : L.regions) {
    std::string d = scan(prev_end, a.ptr);
    if (!d.empty()) return d;
    prev = &a;
    prev_end = a.ptr + a.size;
  }
  return scan(prev_end, std::min<const char*>(prev_end + kSmemGuard, L.arena + L.arena_cap));
#endif
}

inline void* dynamic_shared() { return cur_launch("AX_DYNAMIC_SHARED").dyn; }

}  // namespace detail
}  // namespace ax_emu

#include "checker_hooks.h"

namespace ax_emu {
namespace detail {

// ---------------------------------------------------------------------------
// Barriers
// ---------------------------------------------------------------------------
inline int barrier_at(Site s, BarKind kind, int pred) {
  LaunchState& L = cur_launch("__syncthreads");
  ThreadCtx& t = *g_tls.cur;
  t.bar_site = s;
  t.bar_kind = kind;
  t.bar_pred = pred;
  t.state = TState::Barrier;
  suspend(L, t);
  after_sync(L, t);
  return t.bar_result;
}
inline void syncthreads_at(Site s) { barrier_at(s, BarKind::Plain, 0); }
inline int syncthreads_count_at(Site s, int pred) { return barrier_at(s, BarKind::Count, pred != 0); }
inline int syncthreads_and_at(Site s, int pred) { return barrier_at(s, BarKind::And, pred != 0); }
inline int syncthreads_or_at(Site s, int pred) { return barrier_at(s, BarKind::Or, pred != 0); }

// ---------------------------------------------------------------------------
// Warp collectives
// ---------------------------------------------------------------------------
inline bool compatible(const WarpRec& a, const WarpRec& b) {
  if (a.op != b.op || a.mask != b.mask) return false;
  if (a.op == WOp::SyncWarp) return true;  // __syncwarp may match across call sites (sm_70+)
  return same_site(a.site, b.site) && a.width == b.width && a.vsize == b.vsize;
}

inline uint16_t lo16(uint32_t v) { return static_cast<uint16_t>(v & 0xffffu); }
inline uint16_t hi16(uint32_t v) { return static_cast<uint16_t>(v >> 16); }
inline float bf16_bits_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float f16_bits_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while (!(man & 0x400u));
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void complete_mma(LaunchState& L, unsigned w, bool bf16) {
  float A[16][16], B[16][8], C[16][8];
  auto cvt = [bf16](uint16_t h) { return bf16 ? bf16_bits_to_float(h) : f16_bits_to_float(h); };
  for (unsigned lane = 0; lane < 32; ++lane) {
    const WarpRec& r = L.thread(w, lane).w;
    const auto* a = static_cast<const uint32_t*>(r.p0);
    const auto* b = static_cast<const uint32_t*>(r.p1);
    const auto* c = static_cast<const float*>(r.p2);
    unsigned g = lane >> 2, tq = lane & 3;
    for (unsigned i = 0; i < 8; ++i) {
      uint32_t reg = a[i / 2];
      uint16_t h = (i & 1) ? hi16(reg) : lo16(reg);
      unsigned row = g + (((i >> 1) & 1) ? 8 : 0);
      unsigned col = tq * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = cvt(h);
    }
    for (unsigned i = 0; i < 4; ++i) {
      uint32_t reg = b[i / 2];
      uint16_t h = (i & 1) ? hi16(reg) : lo16(reg);
      unsigned k = tq * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      B[k][g] = cvt(h);
    }
    for (unsigned i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][tq * 2 + (i & 1)] = c[i];
  }
  // Products of 16-bit floats are exact in double; accumulate in double and
  // round once (the hardware's fp32 accumulation order is unspecified).
  float D[16][8];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double acc = C[m][n];
      for (int k = 0; k < 16; ++k) acc += static_cast<double>(A[m][k]) * static_cast<double>(B[k][n]);
      D[m][n] = static_cast<float>(acc);
    }
  for (unsigned lane = 0; lane < 32; ++lane) {
    float* d = static_cast<float*>(L.thread(w, lane).w.out);
    unsigned g = lane >> 2, tq = lane & 3;
    for (unsigned i = 0; i < 4; ++i) d[i] = D[g + (i >= 2 ? 8 : 0)][tq * 2 + (i & 1)];
  }
}

AX_EMU_NOINSTR inline void complete_ldmatrix(LaunchState& L, unsigned w, bool trans) {
  uint32_t res[32][4];
  for (unsigned j = 0; j < 32; ++j) {
    for (unsigned i = 0; i < 4; ++i) {
      if (!trans) {
        const auto* row = static_cast<const unsigned char*>(L.thread(w, i * 8 + j / 4).w.p0);
        std::memcpy(&res[j][i], row + (j % 4) * 4, 4);
      } else {
        const auto* r0 = static_cast<const unsigned char*>(L.thread(w, i * 8 + 2 * (j % 4)).w.p0);
        const auto* r1 = static_cast<const unsigned char*>(L.thread(w, i * 8 + 2 * (j % 4) + 1).w.p0);
        uint16_t e0, e1;
        std::memcpy(&e0, r0 + (j / 4) * 2, 2);
        std::memcpy(&e1, r1 + (j / 4) * 2, 2);
        res[j][i] = static_cast<uint32_t>(e0) | (static_cast<uint32_t>(e1) << 16);
      }
    }
  }
  for (unsigned j = 0; j < 32; ++j) std::memcpy(L.thread(w, j).w.out, res[j], sizeof res[j]);
}

inline void complete_warp_op(LaunchState& L, unsigned w, uint32_t eff, WOp op) {
  switch (op) {
    case WOp::SyncWarp: return;
    case WOp::Shfl:
    case WOp::ShflUp:
    case WOp::ShflDown:
    case WOp::ShflXor: {
      uint64_t vals[32];
      for (uint32_t m = eff; m; m &= m - 1) vals[__builtin_ctz(m)] = L.thread(w, __builtin_ctz(m)).w.val;
      for (uint32_t m = eff; m; m &= m - 1) {
        int j = __builtin_ctz(m);
        WarpRec& r = L.thread(w, j).w;
        int width = r.width, base = j & ~(width - 1), src = j;
        switch (op) {
          case WOp::Shfl: src = base + (r.arg & (width - 1)); break;
          case WOp::ShflUp: src = (j - r.arg >= base) ? j - r.arg : j; break;
          case WOp::ShflDown: src = (j + r.arg < base + width) ? j + r.arg : j; break;
          default: src = ((j ^ r.arg) < base + width) ? (j ^ r.arg) : j; break;
        }
        // Reading a lane that is not in the mask (or does not exist) is
        // undefined in CUDA: return a poison pattern (NaN / -1).
        r.result = (src >= 0 && src < 32 && ((eff >> src) & 1)) ? vals[src] : ~0ull;
      }
      return;
    }
    case WOp::Ballot:
    case WOp::Any:
    case WOp::All: {
      uint32_t bits = 0;
      for (uint32_t m = eff; m; m &= m - 1) {
        int j = __builtin_ctz(m);
        if (L.thread(w, j).w.arg) bits |= 1u << j;
      }
      uint64_t res = op == WOp::Ballot ? bits : op == WOp::Any ? (bits != 0) : (bits == eff);
      for (uint32_t m = eff; m; m &= m - 1) L.thread(w, __builtin_ctz(m)).w.result = res;
      return;
    }
    case WOp::MmaBf16:
    case WOp::MmaF16: complete_mma(L, w, op == WOp::MmaBf16); return;
    case WOp::LdMatrixX4:
    case WOp::LdMatrixX4Trans: complete_ldmatrix(L, w, op == WOp::LdMatrixX4Trans); return;
  }
}

// The calling thread's t.w must be filled in (except eff). Returns once all
// lanes of the mask arrived and the collective was computed.
inline void warp_collective(const char* what) {
  LaunchState& L = cur_launch(what);
  ThreadCtx& t = *g_tls.cur;
  WarpRec& rec = t.w;
  const unsigned w = t.warp, lane = t.lane;
  const uint32_t bit = 1u << lane;
  auto where = [&rec]() { return std::string(wop_name(rec.op)) + " at " + site_str(rec.site); };
  if (!(rec.mask & bit))
    fail(where() + ": calling lane " + std::to_string(lane) + " is not in the mask " + hex32(rec.mask));
  const bool whole_warp = rec.op == WOp::MmaBf16 || rec.op == WOp::MmaF16 || rec.op == WOp::LdMatrixX4 ||
                          rec.op == WOp::LdMatrixX4Trans;
  if (whole_warp && L.warp_exist[w] != 0xffffffffu)
    fail(where() + " needs a full warp of 32 threads, but warp " + std::to_string(w) + " has only lanes " +
         lanes_str(L.warp_exist[w]));
  const uint32_t eff = rec.mask & L.warp_exist[w];
  rec.eff = eff;
  if (uint32_t dead = eff & L.warp_done[w])
    fail(where() + ": lane(s) " + lanes_str(dead) + " of the mask " + hex32(rec.mask) + " in warp " + std::to_string(w) +
         " have already exited");
  // Lanes already waiting in a collective. A lane of my mask that waits in a
  // different collective whose mask contains me can never meet me: error.
  // (A lane waiting in another group's collective that excludes me may still
  // come to mine later; real deadlocks are caught when the block stalls.)
  uint32_t arrived = L.warp_arrived[w];
  uint32_t joined = bit;
  for (uint32_t m = arrived & eff; m; m &= m - 1) {
    unsigned j = __builtin_ctz(m);
    const WarpRec& o = L.thread(w, j).w;
    if (compatible(o, rec)) {
      joined |= 1u << j;
    } else if ((o.eff >> lane) & 1) {
      fail("warp divergence in warp " + std::to_string(w) + ": lane " + std::to_string(lane) + " reached " + where() +
           " (mask " + hex32(rec.mask) + ") while lane " + std::to_string(j) + " waits in " + wop_name(o.op) + " at " +
           site_str(o.site) + " (mask " + hex32(o.mask) + ")");
    }
  }
  arrived |= bit;
  if (joined == eff) {
    L.warp_arrived[w] = arrived & ~eff;
    complete_warp_op(L, w, eff, rec.op);
    collective_done(L, w, eff);
    for (uint32_t m = eff & ~bit; m; m &= m - 1) {
      unsigned j = __builtin_ctz(m);
      L.thread(w, j).state = TState::Ready;
      L.ready.push_back(w * 32 + j);
    }
    after_sync(L, t);
    return;
  }
  L.warp_arrived[w] = arrived;
  t.state = TState::Warp;
  suspend(L, t);
  after_sync(L, t);
}

inline void check_width(int width, const char* what, Site s) {
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail(std::string(what) + " at " + site_str(s) + ": width " + std::to_string(width) +
         " is not a power of two in [1, 32]");
}

template <class T>
inline T shfl_impl(Site s, WOp op, unsigned mask, T v, int arg, int width) {
  static_assert(sizeof(T) <= 8, "warp shuffles support values of at most 8 bytes");
  static_assert(std::is_trivially_destructible<T>::value && std::is_copy_constructible<T>::value,
                "warp shuffles need a trivially copyable value type");
  ThreadCtx& t = cur_thread(wop_name(op));
  check_width(width, wop_name(op), s);
  WarpRec& r = t.w;
  r = WarpRec{};
  r.op = op;
  r.mask = mask;
  r.site = s;
  r.arg = arg;
  r.width = width;
  r.vsize = sizeof(T);
  std::memcpy(&r.val, static_cast<const void*>(&v), sizeof(T));
  warp_collective(wop_name(op));
  T out = v;
  std::memcpy(static_cast<void*>(&out), &t.w.result, sizeof(T));
  return out;
}

template <class T>
inline T shfl_sync_at(Site s, unsigned mask, T v, int src_lane, int width = 32) {
  return shfl_impl<T>(s, WOp::Shfl, mask, v, src_lane, width);
}
template <class T>
inline T shfl_up_sync_at(Site s, unsigned mask, T v, unsigned delta, int width = 32) {
  return shfl_impl<T>(s, WOp::ShflUp, mask, v, static_cast<int>(delta & 63u), width);
}
template <class T>
inline T shfl_down_sync_at(Site s, unsigned mask, T v, unsigned delta, int width = 32) {
  return shfl_impl<T>(s, WOp::ShflDown, mask, v, static_cast<int>(delta & 63u), width);
}
template <class T>
inline T shfl_xor_sync_at(Site s, unsigned mask, T v, int lane_mask, int width = 32) {
  return shfl_impl<T>(s, WOp::ShflXor, mask, v, lane_mask & 31, width);
}

inline uint64_t vote_impl(Site s, WOp op, unsigned mask, int pred) {
  ThreadCtx& t = cur_thread(wop_name(op));
  WarpRec& r = t.w;
  r = WarpRec{};
  r.op = op;
  r.mask = mask;
  r.site = s;
  r.arg = pred != 0;
  warp_collective(wop_name(op));
  return t.w.result;
}
inline unsigned ballot_sync_at(Site s, unsigned mask, int pred) {
  return static_cast<unsigned>(vote_impl(s, WOp::Ballot, mask, pred));
}
inline int any_sync_at(Site s, unsigned mask, int pred) { return static_cast<int>(vote_impl(s, WOp::Any, mask, pred)); }
inline int all_sync_at(Site s, unsigned mask, int pred) { return static_cast<int>(vote_impl(s, WOp::All, mask, pred)); }
inline void syncwarp_at(Site s, unsigned mask = 0xffffffffu) { vote_impl(s, WOp::SyncWarp, mask, 0); }
struct SyncwarpCall {
  Site site;
  void operator()(unsigned mask = 0xffffffffu) const { syncwarp_at(site, mask); }
};

// ---------------------------------------------------------------------------
// cp.async emulation: copies are deferred until the matching wait, so reading
// the destination before cp_async_wait shows stale/poisoned data.
// ---------------------------------------------------------------------------
AX_EMU_NOINSTR inline void cp_async_16_at(Site s, void* dst, const void* src, bool valid) {
  ThreadCtx& t = cur_thread("ax::cp_async_16");
  LaunchState& L = *g_tls.L;
  if ((reinterpret_cast<uintptr_t>(dst) & 15) || (valid && (reinterpret_cast<uintptr_t>(src) & 15)))
    fail("ax::cp_async_16 at " + site_str(s) + ": misaligned address (both must be 16-byte aligned)");
  if (!in_shared(L, dst, 16))
    fail("ax::cp_async_16 at " + site_str(s) + ": destination is not inside this block's shared memory");
  cp_async_issued(L, t, s, dst, valid ? src : nullptr);
  CpCopy c;
  c.dst = dst;
  c.group = t.cp_group;
  if (valid)
    std::memcpy(c.bytes, src, 16);
  else
    std::memset(c.bytes, 0, 16);
  t.cp.push_back(c);
}
inline void cp_async_commit_impl() {
  ThreadCtx& t = cur_thread("ax::cp_async_commit");
  ++t.cp_group;
}
// Complete every copy whose group id < limit.
AX_EMU_NOINSTR inline void cp_async_complete(uint64_t limit) {
  ThreadCtx& t = cur_thread("ax::cp_async_wait");
  size_t keep = 0;
  for (size_t i = 0; i < t.cp.size(); ++i) {
    if (t.cp[i].group < limit)
      cp_async_land(*g_tls.L, t.cp[i]);
    else
      t.cp[keep++] = t.cp[i];
  }
  t.cp.resize(keep);
}
inline void cp_async_wait_impl(int n) {
  ThreadCtx& t = cur_thread("ax::cp_async_wait");
  uint64_t un = static_cast<uint64_t>(n < 0 ? 0 : n);
  cp_async_complete(t.cp_group > un ? t.cp_group - un : 0);
}
inline void cp_async_wait_all_impl() {
  ThreadCtx& t = cur_thread("ax::cp_async_wait_all");
  ++t.cp_group;  // cp.async.wait_all == commit_group + wait_group 0
  cp_async_complete(t.cp_group);
}

inline void mma_at(Site s, WOp op, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  ThreadCtx& t = cur_thread(wop_name(op));
  WarpRec& r = t.w;
  r = WarpRec{};
  r.op = op;
  r.mask = 0xffffffffu;
  r.site = s;
  r.p0 = a;
  r.p1 = b;
  r.p2 = c;
  r.out = d;
  warp_collective(wop_name(op));
}

inline void ldmatrix_at(Site s, bool trans, uint32_t r4[4], const void* row_ptr) {
  WOp op = trans ? WOp::LdMatrixX4Trans : WOp::LdMatrixX4;
  ThreadCtx& t = cur_thread(wop_name(op));
  LaunchState& L = *g_tls.L;
  if (reinterpret_cast<uintptr_t>(row_ptr) & 15)
    fail(std::string(wop_name(op)) + " at " + site_str(s) + ": row address is not 16-byte aligned");
  if (!in_shared(L, row_ptr, 16))
    fail(std::string(wop_name(op)) + " at " + site_str(s) + ": row address is not inside this block's shared memory");
  ldmatrix_read(L, t, s, row_ptr);
  WarpRec& r = t.w;
  r = WarpRec{};
  r.op = op;
  r.mask = 0xffffffffu;
  r.site = s;
  r.p0 = row_ptr;
  r.out = r4;
  warp_collective(wop_name(op));
}

// ---------------------------------------------------------------------------
// Scheduler
// ---------------------------------------------------------------------------
inline void kill_all(LaunchState& L) {
  L.killing = true;
  for (unsigned i = 0; i < L.nthreads; ++i) {
    ThreadCtx& t = L.threads[i];
    if (t.state == TState::Done) continue;
    if (!t.started) {
      t.state = TState::Done;
      continue;
    }
    t.kill = true;
    for (int attempt = 0; attempt < 4 && t.state != TState::Done; ++attempt) resume(L, t);
    if (t.state != TState::Done) {
#if AX_EMU_ASAN
      __asan_unpoison_memory_region(t.stack.lo, t.stack.size);  // abandoned fiber
#endif
      t.state = TState::Done;
    }
  }
  L.ready.clear();
}

inline std::string describe_thread_state(LaunchState& L, ThreadCtx& t) {
  switch (t.state) {
    case TState::Done: return "has exited";
    case TState::Barrier: return "waits at __syncthreads() at " + site_str(t.bar_site);
    case TState::Warp: return std::string("waits in ") + wop_name(t.w.op) + " at " + site_str(t.w.site);
    default: (void)L; return "is runnable";
  }
}

// Called when no thread is runnable. Returns true when the block finished.
inline bool resolve_stall(LaunchState& L) {
  unsigned n_done = 0, n_bar = 0, n_warp = 0;
  ThreadCtx* first_bar = nullptr;
  ThreadCtx* other_bar = nullptr;
  ThreadCtx* first_done = nullptr;
  ThreadCtx* first_warp = nullptr;
  unsigned n_first_site = 0;
  for (unsigned i = 0; i < L.nthreads; ++i) {
    ThreadCtx& t = L.threads[i];
    switch (t.state) {
      case TState::Done:
        ++n_done;
        if (!first_done) first_done = &t;
        break;
      case TState::Barrier:
        ++n_bar;
        if (!first_bar) {
          first_bar = &t;
        }
        if (same_site(first_bar->bar_site, t.bar_site) && first_bar->bar_kind == t.bar_kind)
          ++n_first_site;
        else if (!other_bar)
          other_bar = &t;
        break;
      case TState::Warp:
        ++n_warp;
        if (!first_warp) first_warp = &t;
        break;
      default: break;
    }
  }
  if (n_done == L.nthreads) return true;
  if (n_warp) {
    ThreadCtx& t = *first_warp;
    std::string missing;
    uint32_t eff = t.w.eff, joined = 0;
    for (uint32_t m = eff; m; m &= m - 1) {
      ThreadCtx& o = L.thread(t.warp, __builtin_ctz(m));
      if (o.state == TState::Warp && compatible(o.w, t.w)) {
        joined |= 1u << o.lane;
      } else if (missing.empty()) {
        missing = "lane " + std::to_string(o.lane) + " " + describe_thread_state(L, o);
        if (o.state == TState::Warp) missing += " (mask " + hex32(o.w.mask) + ")";
      }
    }
    record_error(L, "deadlock in warp " + std::to_string(t.warp) + ": lane(s) " + lanes_str(joined) +
                        " wait in " + wop_name(t.w.op) + " at " + site_str(t.w.site) + " with mask " +
                        hex32(t.w.mask) + ", but " + (missing.empty() ? "other lanes never arrive" : missing) +
                        " (" + std::to_string(n_bar) + " thread(s) of the block wait at __syncthreads, " +
                        std::to_string(n_done) + " exited)");
    return false;
  }
  if (n_done) {
    record_error(L, "__syncthreads() divergence: " + std::to_string(n_bar) + " of " + std::to_string(L.nthreads) +
                        " threads wait at __syncthreads() at " + site_str(first_bar->bar_site) + " (e.g. thread " +
                        u3str(first_bar->tid) + ") while " + std::to_string(n_done) +
                        " thread(s) have exited (e.g. thread " + u3str(first_done->tid) + ")");
    return false;
  }
  if (other_bar) {
    record_error(L, "__syncthreads() divergence: threads wait at different barriers: " + std::to_string(n_first_site) +
                        " at " + site_str(first_bar->bar_site) + " (e.g. thread " + u3str(first_bar->tid) + "), " +
                        std::to_string(n_bar - n_first_site) + " elsewhere, e.g. thread " + u3str(other_bar->tid) +
                        " at " + site_str(other_bar->bar_site));
    return false;
  }
  // Everyone is at the same barrier: release it.
  int count = 0;
  for (unsigned i = 0; i < L.nthreads; ++i) count += L.threads[i].bar_pred;
  int result = 0;
  switch (first_bar->bar_kind) {
    case BarKind::Plain: break;
    case BarKind::Count: result = count; break;
    case BarKind::And: result = count == static_cast<int>(L.nthreads); break;
    case BarKind::Or: result = count > 0; break;
  }
  barrier_done(L);
  for (unsigned i = 0; i < L.nthreads; ++i) {
    L.threads[i].bar_result = result;
    L.threads[i].state = TState::Ready;
    L.ready.push_back(i);
  }
  return false;
}

inline void run_block(LaunchState& L, uint64_t seed, uint64_t linear_block) {
  L.rng.seed(seed ^ splitmix64(linear_block + 0x1234567ull));
  L.linear_block = linear_block;
  std::fill(L.warp_arrived.begin(), L.warp_arrived.end(), 0u);
  std::fill(L.warp_done.begin(), L.warp_done.end(), 0u);
  // Poison shared memory for this block: 0xFF bytes = NaN for float/double, -1 for ints.
  shared_poison(L);
  block_started(L);
  StackPool& pool = stack_pool();
  L.ready.clear();
  for (unsigned i = 0; i < L.nthreads; ++i) {
    ThreadCtx& t = L.threads[i];
    t.state = TState::Ready;
    t.started = t.kill = false;
    t.cp.clear();
    t.cp_group = 0;
    t.nsync = 0;
    t.stack = pool.get(i);
    ctx_init(t.ctx, t.stack, &fiber_entry, &t);
    L.ready.push_back(i);
  }
  for (;;) {
    while (!L.ready.empty() && !L.failed) {
      size_t k = 0;
      if (L.shuffle) {
        k = L.rng.below(L.ready.size());
      } else {
        for (size_t i = 1; i < L.ready.size(); ++i)
          if (L.ready[i] < L.ready[k]) k = i;
      }
      unsigned id = L.ready[k];
      L.ready[k] = L.ready.back();
      L.ready.pop_back();
      resume(L, L.threads[id]);
    }
    if (L.failed) break;
    if (resolve_stall(L)) break;
    if (L.failed) break;
  }
  if (L.failed) {
    kill_all(L);
    throw EmulationError(L.error);
  }
  const std::string damage = shared_guard_damage(L);
  if (!damage.empty())
    throw EmulationError(context_prefix(L) + "out-of-bounds shared-memory write: " + damage +
                         " was overwritten (the guard zone around each shared region)");
  block_finished(L);
}

struct TlsLaunchGuard {
  Tls saved;
  explicit TlsLaunchGuard(LaunchState* L) : saved(g_tls) {
    g_tls.L = L;
    g_tls.cur = nullptr;
  }
  ~TlsLaunchGuard() { g_tls = saved; }
};

// Opt-ins of dynamic shared memory above 48 KiB (ax::set_max_dynamic_smem), per kernel function.
struct SmemOptIns {
  std::mutex mu;
  std::map<const void*, size_t> bytes;
};
inline SmemOptIns& smem_opt_ins() {
  static SmemOptIns o;
  return o;
}
inline size_t smem_opt_in(const void* kfn) {
  SmemOptIns& o = smem_opt_ins();
  std::lock_guard<std::mutex> g(o.mu);
  auto it = o.bytes.find(kfn);
  return it == o.bytes.end() ? kDefaultDynamicSmem : it->second;
}

// The kernel's __launch_bounds__ maximum of threads per block, read back from its entry (see the
// __launch_bounds__ macro above): 32 per leading one-byte NOP, after an optional endbr64. 0: none.
inline unsigned launch_bound_of(const void* kfn) {
#if AX_EMU_LAUNCH_BOUNDS_CHECKED
  const auto* c = static_cast<const unsigned char*>(kfn);
  if (c[0] == 0xf3 && c[1] == 0x0f && c[2] == 0x1e && c[3] == 0xfa) c += 4;
  unsigned n = 0;
  while (n < 33 && c[n] == 0x90) ++n;
  return n * 32;
#else
  (void)kfn;
  return 0;
#endif
}

inline void run_launch(const char* kname, Site site, const void* kfn, dim3 grid, dim3 block, size_t smem,
                       const void* stream, void (*thunk)(void*), void* payload) {
  std::string who = "ax_emu: kernel '" + std::string(kname) + "' launched at " + site_str(site) + ": ";
  if (g_tls.L)
    throw EmulationError(who + "nested kernel launch (from device code or a running launch) is not supported");
  auto bad = [&](const std::string& why) {
    throw EmulationError(who + "invalid configuration argument (cudaErrorInvalidConfiguration): " + why);
  };
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0) bad("block dimension is 0");
  if (block.x > 1024 || block.y > 1024 || block.z > 64)
    bad("block dimensions exceed (1024, 1024, 64): " + u3str(uint3{block.x, block.y, block.z}));
  if (nthreads > kMaxThreadsPerBlock) bad("block has " + std::to_string(nthreads) + " threads (max 1024)");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) bad("grid dimension is 0");
  if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    bad("grid dimensions exceed (2^31-1, 65535, 65535): " + u3str(uint3{grid.x, grid.y, grid.z}));
  if (smem > kMaxSmemPerBlock)
    bad("dynamic shared memory of " + std::to_string(smem) + " bytes exceeds the per-block maximum of " +
        std::to_string(kMaxSmemPerBlock));
  const unsigned bound = launch_bound_of(kfn);
  if (bound && nthreads > bound)
    throw EmulationError(who + "too many resources requested for launch (cudaErrorLaunchOutOfResources): a block of " +
                         std::to_string(nthreads) + " threads exceeds the kernel's __launch_bounds__ of " +
                         std::to_string(bound));
  if (smem > kDefaultDynamicSmem && smem > smem_opt_in(kfn))
    throw EmulationError(who + "dynamic shared memory of " + std::to_string(smem) + " bytes exceeds " +
                         std::to_string(kDefaultDynamicSmem) +
                         " bytes without the opt-in (the launcher must call ax::set_max_dynamic_smem(kernel, bytes), "
                         "cudaFuncAttributeMaxDynamicSharedMemorySize, for this kernel first)");
  const Config& cfg = config();
  if (stream != cfg.current_stream)
    throw EmulationError(who + "launched on stream " + hex_ptr(stream) + ", not the current stream " +
                         hex_ptr(cfg.current_stream) +
                         " (an op's kernels must all run on the stream it was given: ax_emu::set_current_stream)");

  if (config().log_launches) config().launch_log.emplace_back(kname);
  LaunchState L;
  L.kname = kname;
  L.launch_site = site;
  L.kfn = kfn;
  L.grid = grid;
  L.block = block;
  L.thunk = thunk;
  L.payload = payload;
  L.nthreads = static_cast<unsigned>(nthreads);
  L.nwarps = (L.nthreads + 31) / 32;
  shared_arena_init(L, smem);
  const uint64_t seed = cfg.seed_override ? cfg.seed : env_seed();
  L.shuffle = cfg.shuffle_override >= 0 ? cfg.shuffle_override != 0 : env_shuffle();
  L.threads.reset(new ThreadCtx[L.nthreads]);
  L.warp_arrived.assign(L.nwarps, 0u);
  L.warp_done.assign(L.nwarps, 0u);
  L.warp_exist.assign(L.nwarps, 0u);
  L.ready.reserve(L.nthreads);
  for (unsigned z = 0, i = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++i) {
        ThreadCtx& t = L.threads[i];
        t.tid = uint3{x, y, z};
        t.linear = i;
        t.warp = i / 32;
        t.lane = i % 32;
        L.warp_exist[t.warp] |= 1u << t.lane;
      }

  TlsLaunchGuard guard(&L);
  launch_started(L);
  const uint64_t nblocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  // Blocks run one at a time in a seeded random order (CUDA guarantees no order). With a block sample
  // (metrics of large grids), an evenly spaced subset of them.
  std::vector<uint64_t> order;
  const uint64_t sample = cfg.block_sample;
  if (sample && nblocks > sample) {
    for (uint64_t i = 0; i < sample; ++i) order.push_back(sample > 1 ? i * (nblocks - 1) / (sample - 1) : 0);
  } else if (L.shuffle && nblocks <= (1ull << 22)) {
    order.resize(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
    Rng r;
    r.seed(seed ^ 0xB10C5ull);
    for (uint64_t i = nblocks; i > 1; --i) std::swap(order[i - 1], order[r.below(i)]);
  }
  const uint64_t nrun = order.empty() ? nblocks : order.size();
  for (uint64_t k = 0; k < nrun; ++k) {
    uint64_t b = order.empty() ? k : order[k];
    L.block_idx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                        static_cast<unsigned>(b / (static_cast<uint64_t>(grid.x) * grid.y))};
    run_block(L, seed, b);
  }
  launch_finished(L);
  const std::string damage = damaged_guard();
  if (!damage.empty())
    throw EmulationError(who + "out-of-bounds global write: " + damage +
                         " was overwritten (the guard zone around each ax_emu::device_malloc buffer)");
}

template <class... P>
struct KernelPayload {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> args;
  static void run(void* self) {
    auto* p = static_cast<KernelPayload*>(self);
    // Each emulated thread gets its own copy of the parameters (by value).
    std::apply([p](const auto&... a) { p->kernel(a...); }, p->args);
  }
};

template <class... P, class... A>
inline void launch_named(const char* kname, const char* file, int line, void (*kernel)(P...), dim3 grid, dim3 block,
                         size_t smem, const void* stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "AX_LAUNCH: wrong number of kernel arguments");
  static_assert(!(std::is_reference<P>::value || ...), "__global__ kernel parameters must be passed by value");
  KernelPayload<P...> payload{kernel, std::tuple<std::decay_t<P>...>(static_cast<std::decay_t<P>>(std::forward<A>(args))...)};
  run_launch(kname, Site{file, line}, reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
             &KernelPayload<P...>::run, &payload);
}

// AX_LAUNCH helper: make_launch(...)(args...) so that zero kernel arguments
// need no comma elision in the macro.
template <class... P>
struct PendingLaunch {
  const char* kname;
  Site site;
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  const void* stream;
  template <class... A>
  void operator()(A&&... args) const {
    launch_named(kname, site.file, site.line, kernel, grid, block, smem, stream, std::forward<A>(args)...);
  }
};
template <class... P>
inline PendingLaunch<P...> make_launch(const char* kname, const char* file, int line, void (*kernel)(P...), dim3 grid,
                                       dim3 block, size_t smem, const void* stream) {
  return PendingLaunch<P...>{kname, Site{file, line}, kernel, grid, block, smem, stream};
}

}  // namespace detail

// Public host API -----------------------------------------------------------

// Launch `kernel` over grid x block with `smem` bytes of dynamic shared memory.
template <class... P, class... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) {
  detail::launch_named("<kernel>", "<ax_emu::launch>", 0, kernel, grid, block, smem, detail::config().current_stream,
                       std::forward<A>(args)...);
}

// Seed of the thread-order / block-order shuffling for launches issued by the
// calling host thread (default: $AX_EMU_SEED, else a fixed value).
inline void set_seed(uint64_t seed) {
  detail::config().seed_override = true;
  detail::config().seed = seed;
}
inline void clear_seed() { detail::config().seed_override = false; }
inline uint64_t current_seed() { return detail::config().seed_override ? detail::config().seed : detail::env_seed(); }
// Enable/disable shuffling for this host thread (default: on unless AX_EMU_SHUFFLE=0).
// With shuffling off, threads and blocks run in linear order.
inline void set_shuffle(bool on) { detail::config().shuffle_override = on ? 1 : 0; }
inline void clear_shuffle() { detail::config().shuffle_override = -1; }

// Record the names of the kernels the calling host thread launches, so a test can tell which kernels
// an op ran; stop_launch_log returns them in launch order and stops recording.
inline void start_launch_log() {
  detail::config().log_launches = true;
  detail::config().launch_log.clear();
}
inline std::vector<std::string> stop_launch_log() {
  detail::config().log_launches = false;
  return std::move(detail::config().launch_log);
}

// The calling host thread's current stream (default 0, the default stream). A launch on any other stream
// is an error: the kernels of one op must run on the stream the op was given.
inline void set_current_stream(const void* s) { detail::config().current_stream = s; }
inline const void* current_stream() { return detail::config().current_stream; }

// Dynamic shared memory above 48 KiB for `kernel` (cudaFuncAttributeMaxDynamicSharedMemorySize); a launch
// above 48 KiB without it is an error, as on a GPU. Use ax::set_max_dynamic_smem in kernel code.
template <class... P>
inline void set_max_dynamic_smem(void (*kernel)(P...), size_t bytes) {
  detail::SmemOptIns& o = detail::smem_opt_ins();
  std::lock_guard<std::mutex> g(o.mu);
  o.bytes[reinterpret_cast<const void*>(kernel)] = bytes;
}

// Runs at most n evenly spaced blocks of every launch of the calling host thread (0: all). For the memory
// metrics of large grids only: the blocks not run write nothing.
inline void set_block_sample(uint64_t n) { detail::config().block_sample = n; }

// Device memory (cudaMalloc): a buffer between guard zones, its bytes poisoned (0xFF) and, in checked
// builds, uninitialised until the host marks them (mark_initialized) or a kernel writes them. Any host
// thread may free it.
inline void* device_malloc(size_t bytes, const char* name = "buffer") { return detail::device_malloc_impl(bytes, name); }
inline void device_free(void* p) { detail::device_free_impl(p); }
// The host wrote [p, p + bytes) (cudaMemcpy host to device): initialised.
inline void mark_initialized(const void* p, size_t bytes) { detail::set_initialized(p, bytes, true); }
// Fills [p, p + bytes) with 0xFF (NaN / -1) and marks device memory uninitialised: a launch output the
// kernels must write before anything reads it.
inline void poison(void* p, size_t bytes) {
  if (p && bytes) std::memset(p, detail::kPoisonByte, bytes);
  detail::set_initialized(p, bytes, false);
}

// A device array of T (the std::vector of the emulated device): uninitialised, or a copy of host data.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n, const char* name = "buffer")
      : n_(n), p_(static_cast<T*>(device_malloc(n * sizeof(T), name))) {}
  DeviceBuffer(const std::vector<T>& host, const char* name = "buffer") : DeviceBuffer(host.size(), name) {
    if (n_) std::memcpy(static_cast<void*>(p_), host.data(), n_ * sizeof(T));
    mark_initialized(p_, n_ * sizeof(T));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { device_free(p_); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  std::vector<T> to_host() const {
    std::vector<T> v(n_);
    if (n_) std::memcpy(static_cast<void*>(v.data()), p_, n_ * sizeof(T));
    return v;
  }

 private:
  size_t n_;
  T* p_;
};

// Memory metrics of the launches of the calling host thread (checked builds; see checker.h): start,
// launch, stop returns one row per (kernel, source line, space, direction).
inline void start_metrics() {
  detail::Config& c = detail::config();
  c.metrics = true;
  c.metric_rows.clear();
  c.metric_sites.clear();
  c.metric_index.clear();
}
// Rows of the same kernel, source line, space and direction (several instructions of one line) merge.
inline std::vector<MetricRow> stop_metrics() {
  detail::Config& c = detail::config();
  c.metrics = false;
  std::vector<uint64_t> pcs;
  for (uint64_t key : c.metric_sites)
    if (!(key & detail::kExplicitSite)) pcs.push_back(detail::site_of_key(key));
  const std::vector<std::string> names = detail::resolve_pcs(pcs);
  std::map<uint64_t, std::string> name_of;
  for (size_t i = 0; i < pcs.size(); ++i) name_of[pcs[i]] = names[i];
  std::vector<MetricRow> out;
  std::map<std::tuple<std::string, std::string, bool, bool>, size_t> index;
  for (size_t i = 0; i < c.metric_rows.size(); ++i) {
    MetricRow row = c.metric_rows[i];
    const uint64_t s = detail::site_of_key(c.metric_sites[i]);
    row.site = (s & detail::kExplicitSite) ? detail::site_name(s) : name_of[s];
    auto key = std::make_tuple(row.kernel, row.site, row.shared, row.write);
    auto it = index.find(key);
    if (it == index.end()) {
      index.emplace(key, out.size());
      out.push_back(row);
      continue;
    }
    MetricRow& m = out[it->second];
    const double n = double(m.accesses + row.accesses);
    m.bytes_per_lane = n ? (m.bytes_per_lane * double(m.accesses) + row.bytes_per_lane * double(row.accesses)) / n : 0;
    m.accesses += row.accesses;
    m.wavefronts += row.wavefronts;
    m.ideal_wavefronts += row.ideal_wavefronts;
    m.sectors += row.sectors;
    m.min_sectors += row.min_sectors;
  }
  c.metric_rows.clear();
  c.metric_sites.clear();
  c.metric_index.clear();
  return out;
}
// Race, initialisation and cp.async checks of checked builds on (default) or off (metrics only).
inline void set_checks(bool on) {
#if AX_EMU_CHECKED
  detail::checks_enabled() = on;
#else
  (void)on;
#endif
}
// Whether this build sees every memory access of kernel code (AX_EMU_CHECKED, see checker.h).
constexpr bool checked_build() { return AX_EMU_CHECKED != 0; }

}  // namespace ax_emu

// ---------------------------------------------------------------------------
// Device-side names used by kernel source
// ---------------------------------------------------------------------------
#define AX_EMU_SITE (::ax_emu::detail::Site{__FILE__, __LINE__})

#define threadIdx (::ax_emu::detail::thread_idx())
#define blockIdx (::ax_emu::detail::block_idx())
#define blockDim (::ax_emu::detail::block_dim())
#define gridDim (::ax_emu::detail::grid_dim())
#define warpSize (::ax_emu::detail::warp_size())

#define __syncthreads() ::ax_emu::detail::syncthreads_at(AX_EMU_SITE)
#define __syncthreads_count(pred) ::ax_emu::detail::syncthreads_count_at(AX_EMU_SITE, (pred))
#define __syncthreads_and(pred) ::ax_emu::detail::syncthreads_and_at(AX_EMU_SITE, (pred))
#define __syncthreads_or(pred) ::ax_emu::detail::syncthreads_or_at(AX_EMU_SITE, (pred))
#define __syncwarp(...) ::ax_emu::detail::SyncwarpCall{AX_EMU_SITE}(__VA_ARGS__)
#define __shfl_sync(...) ::ax_emu::detail::shfl_sync_at(AX_EMU_SITE, __VA_ARGS__)
#define __shfl_up_sync(...) ::ax_emu::detail::shfl_up_sync_at(AX_EMU_SITE, __VA_ARGS__)
#define __shfl_down_sync(...) ::ax_emu::detail::shfl_down_sync_at(AX_EMU_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::ax_emu::detail::shfl_xor_sync_at(AX_EMU_SITE, __VA_ARGS__)
#define __ballot_sync(mask, pred) ::ax_emu::detail::ballot_sync_at(AX_EMU_SITE, (mask), (pred))
#define __any_sync(mask, pred) ::ax_emu::detail::any_sync_at(AX_EMU_SITE, (mask), (pred))
#define __all_sync(mask, pred) ::ax_emu::detail::all_sync_at(AX_EMU_SITE, (mask), (pred))

// Static shared memory: a block-wide array (same address for every thread of
// the block), poisoned with 0xFF bytes before each block.
#define AX_SHARED(T, name, dims)                                                                         \
  static const char ax_smem_key_##name = 0;                                                              \
  using ax_smem_type_##name = T dims;                                                                    \
  ax_smem_type_##name& name = *static_cast<ax_smem_type_##name*>(::ax_emu::detail::shared_static(        \
      &ax_smem_key_##name, sizeof(ax_smem_type_##name), alignof(ax_smem_type_##name), #name, AX_EMU_SITE))
// Dynamic shared memory: exactly the launch's smem bytes, 16-byte aligned.
#define AX_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::ax_emu::detail::dynamic_shared())

// ---------------------------------------------------------------------------
// Device functions that exist as plain functions in CUDA
// ---------------------------------------------------------------------------
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
[[noreturn]] inline void __trap() { ::ax_emu::detail::fail("__trap() called"); }

// Atomics: fibers are cooperative on one host thread, so plain read-modify-write is atomic.
AX_EMU_NOINSTR inline int atomicAdd(int* a, int v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  int o = *a;
  *a = static_cast<int>(static_cast<unsigned>(o) + static_cast<unsigned>(v));
  return o;
}
AX_EMU_NOINSTR inline unsigned atomicAdd(unsigned* a, unsigned v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  unsigned o = *a;
  *a = o + v;
  return o;
}
AX_EMU_NOINSTR inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  unsigned long long o = *a;
  *a = o + v;
  return o;
}
AX_EMU_NOINSTR inline float atomicAdd(float* a, float v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  float o = *a;
  *a = o + v;
  return o;
}
AX_EMU_NOINSTR inline double atomicAdd(double* a, double v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  double o = *a;
  *a = o + v;
  return o;
}
AX_EMU_NOINSTR inline int atomicSub(int* a, int v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  int o = *a;
  *a = static_cast<int>(static_cast<unsigned>(o) - static_cast<unsigned>(v));
  return o;
}
AX_EMU_NOINSTR inline unsigned atomicSub(unsigned* a, unsigned v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  unsigned o = *a;
  *a = o - v;
  return o;
}
template <class T>
AX_EMU_NOINSTR inline T ax_emu_atomic_exch(T* a, T v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  T o = *a;
  *a = v;
  return o;
}
AX_EMU_NOINSTR inline int atomicExch(int* a, int v) { return ax_emu_atomic_exch(a, v); }
AX_EMU_NOINSTR inline unsigned atomicExch(unsigned* a, unsigned v) { return ax_emu_atomic_exch(a, v); }
AX_EMU_NOINSTR inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
  return ax_emu_atomic_exch(a, v);
}
AX_EMU_NOINSTR inline float atomicExch(float* a, float v) { return ax_emu_atomic_exch(a, v); }
#define AX_EMU_ATOMIC_MINMAX(T)                   \
  AX_EMU_NOINSTR inline T atomicMax(T* a, T v) {  \
    ::ax_emu::detail::atomic_touch(a, sizeof *a); \
    T o = *a;                                     \
    *a = o < v ? v : o;                           \
    return o;                                     \
  }                                               \
  AX_EMU_NOINSTR inline T atomicMin(T* a, T v) {  \
    ::ax_emu::detail::atomic_touch(a, sizeof *a); \
    T o = *a;                                     \
    *a = v < o ? v : o;                           \
    return o;                                     \
  }
AX_EMU_ATOMIC_MINMAX(int)
AX_EMU_ATOMIC_MINMAX(unsigned)
AX_EMU_ATOMIC_MINMAX(long long)
AX_EMU_ATOMIC_MINMAX(unsigned long long)
#undef AX_EMU_ATOMIC_MINMAX
#define AX_EMU_ATOMIC_BITS(T)                             \
  AX_EMU_NOINSTR inline T atomicAnd(T* a, T v) {          \
    ::ax_emu::detail::atomic_touch(a, sizeof *a);         \
    T o = *a;                                             \
    *a = o & v;                                           \
    return o;                                             \
  }                                                       \
  AX_EMU_NOINSTR inline T atomicOr(T* a, T v) {           \
    ::ax_emu::detail::atomic_touch(a, sizeof *a);         \
    T o = *a;                                             \
    *a = o | v;                                           \
    return o;                                             \
  }                                                       \
  AX_EMU_NOINSTR inline T atomicXor(T* a, T v) {          \
    ::ax_emu::detail::atomic_touch(a, sizeof *a);         \
    T o = *a;                                             \
    *a = o ^ v;                                           \
    return o;                                             \
  }                                                       \
  AX_EMU_NOINSTR inline T atomicCAS(T* a, T cmp, T v) {   \
    ::ax_emu::detail::atomic_touch(a, sizeof *a);         \
    T o = *a;                                             \
    if (o == cmp) *a = v;                                 \
    return o;                                             \
  }
AX_EMU_ATOMIC_BITS(int)
AX_EMU_ATOMIC_BITS(unsigned)
AX_EMU_ATOMIC_BITS(unsigned long long)
#undef AX_EMU_ATOMIC_BITS
AX_EMU_NOINSTR inline unsigned atomicInc(unsigned* a, unsigned limit) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  unsigned o = *a;
  *a = (o >= limit) ? 0u : o + 1u;
  return o;
}
AX_EMU_NOINSTR inline unsigned atomicDec(unsigned* a, unsigned limit) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  unsigned o = *a;
  *a = (o == 0u || o > limit) ? limit : o - 1u;
  return o;
}
#if AX_EMU_HAS_CUDA_HEADERS
AX_EMU_NOINSTR inline __half atomicAdd(__half* a, __half v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  __half o = *a;
  *a = __float2half(__half2float(o) + __half2float(v));
  return o;
}
AX_EMU_NOINSTR inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  ::ax_emu::detail::atomic_touch(a, sizeof *a);
  __nv_bfloat16 o = *a;
  *a = __float2bfloat16(__bfloat162float(o) + __bfloat162float(v));
  return o;
}
inline __half __hfma(__half a, __half b, __half c) {
  return __float2half(std::fma(__half2float(a), __half2float(b), __half2float(c)));
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __float2bfloat16(std::fma(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c)));
}
#endif

// Common float / integer intrinsics that only exist as device functions in CUDA.
inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline unsigned __float_as_uint(float x) {
  unsigned i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, 8);
  return d;
}
inline long long __double_as_longlong(double x) {
  long long i;
  std::memcpy(&i, &x, 8);
  return i;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
// CUDA's global min/max overloads (device code commonly calls them unqualified).
#define AX_EMU_MINMAX(T)                                      \
  inline T min(T a, T b) { return b < a ? b : a; }           \
  inline T max(T a, T b) { return a < b ? b : a; }
AX_EMU_MINMAX(int)
AX_EMU_MINMAX(unsigned)
AX_EMU_MINMAX(long)
AX_EMU_MINMAX(unsigned long)
AX_EMU_MINMAX(long long)
AX_EMU_MINMAX(unsigned long long)
#undef AX_EMU_MINMAX
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }

// ---------------------------------------------------------------------------
// Portable async-copy / tensor-core wrappers (see portability.cuh for nvcc)
// ---------------------------------------------------------------------------
namespace ax {
using stream_t = void*;

// cp.async.cg 16 bytes global -> shared. Emulation defers the copy until the
// matching cp_async_wait* (src is read at issue time).
#define AX_EMU_FN_SITE const char *ax_file = __builtin_FILE(), int ax_line = __builtin_LINE()
inline void cp_async_16(void* smem_dst, const void* gmem_src, AX_EMU_FN_SITE) {
  ::ax_emu::detail::cp_async_16_at(::ax_emu::detail::Site{ax_file, ax_line}, smem_dst, gmem_src, true);
}
// Same, but when !valid the 16 destination bytes are zero-filled and src is not read.
inline void cp_async_16_zfill(void* smem_dst, const void* gmem_src, bool valid, AX_EMU_FN_SITE) {
  ::ax_emu::detail::cp_async_16_at(::ax_emu::detail::Site{ax_file, ax_line}, smem_dst, gmem_src, valid);
}
inline void st_shared_v4(float* dst, float4 v) { *reinterpret_cast<float4*>(dst) = v; }
inline void cp_async_commit() { ::ax_emu::detail::cp_async_commit_impl(); }
template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait<N>: N must be >= 0");
  ::ax_emu::detail::cp_async_wait_impl(N);
}
inline void cp_async_wait_all() { ::ax_emu::detail::cp_async_wait_all_impl(); }

// Warp-collective mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32.
inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                              AX_EMU_FN_SITE) {
  ::ax_emu::detail::mma_at(::ax_emu::detail::Site{ax_file, ax_line}, ::ax_emu::detail::WOp::MmaBf16, d, a, b, c);
}
inline void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                             AX_EMU_FN_SITE) {
  ::ax_emu::detail::mma_at(::ax_emu::detail::Site{ax_file, ax_line}, ::ax_emu::detail::WOp::MmaF16, d, a, b, c);
}
// Warp-collective ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane l
// passes the address of row (l % 8) of matrix (l / 8).
inline void ldmatrix_x4(uint32_t r[4], const void* smem_row_ptr, AX_EMU_FN_SITE) {
  ::ax_emu::detail::ldmatrix_at(::ax_emu::detail::Site{ax_file, ax_line}, false, r, smem_row_ptr);
}
inline void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row_ptr, AX_EMU_FN_SITE) {
  ::ax_emu::detail::ldmatrix_at(::ax_emu::detail::Site{ax_file, ax_line}, true, r, smem_row_ptr);
}
#undef AX_EMU_FN_SITE
}  // namespace ax

// Plain __shared__ would silently become a per-thread local in emulation.
#undef __shared__
#define __shared__ \
  static_assert(false, "ax_emu: use AX_SHARED(T, name, dims) / AX_DYNAMIC_SHARED(T, name) instead of __shared__");

#pragma GCC visibility pop
