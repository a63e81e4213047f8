// checker.h - memory checks of the CUDA emulator (included by cuda_emu.h; not a public header).
//
// All emulation builds:
//   * device allocations (ax_emu::device_malloc / DeviceBuffer) with guard zones, checked after every
//     launch (an out-of-bounds write is reported at the launch that made it); under ASan the guard zones
//     are poisoned, so ASan reports the access itself;
//   * launch outputs poisoned before the launch (ax::poison_output, called by the launchers).
//
// Checked builds (AX_EMU_CHECKED=1): the kernel translation unit is compiled with
// `-fsanitize=thread --param tsan-instrument-func-entry-exit=0` and linked WITHOUT the ThreadSanitizer
// runtime: the compiler turns every load and store into a call of __tsan_read<N> / __tsan_write<N>,
// which this header defines. The emulator thereby sees every memory access of kernel code (with the
// program counter of the access) and checks it against shadow state:
//   * shared memory, per byte: the last write and up to two reads (thread, barrier epoch, the thread's
//     sync count, site). Two threads touching one byte within one barrier interval, at least one
//     writing, with no warp collective joining them after the earlier access, is a race (the
//     definition of compute-sanitizer's racecheck; warp-synchronous code without __syncwarp included);
//     a byte outside every AX_SHARED / dynamic region is out of bounds;
//   * cp.async: the destination is pending from the issue until the copy lands (at a random sync point
//     of the issuing thread, at the latest at its cp_async_wait); touching a pending byte is an error;
//   * global memory of device allocations, per byte: initialised or not (a read of a byte that neither
//     the host nor a kernel wrote is initcheck's error), and per launch the CTA that wrote it and the
//     CTA(s) that read it (two CTAs of one launch writing a byte, or one reading what another wrote, is
//     a race: CTAs of a launch are unordered); the guard zones are out of bounds;
//   * metrics (ax_emu::start_metrics): per warp-wide access (the k-th execution of one instruction by
//     the lanes of a warp), shared-memory wavefronts against the conflict-free count (32 banks x 4
//     bytes; 8- and 16-byte accesses in half- and quarter-warp phases) and global 32-byte sectors
//     against the minimum for the bytes requested, summed per source line.
// ThreadSanitizer's own runtime is not used: its happens-before model knows nothing of emulated
// barriers, warps or CTAs, and fibers would need annotating at every switch; compiling the accesses to
// hooks gives the emulator every access with its address, size and site, and the CUDA rules are
// checked directly. Checked builds run one host thread at a time.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <dlfcn.h>
#include <elf.h>

// A translation unit compiled with -fsanitize=thread is a checked build.
#ifndef AX_EMU_CHECKED
#if defined(__SANITIZE_THREAD__)
#define AX_EMU_CHECKED 1
#else
#define AX_EMU_CHECKED 0
#endif
#endif

#if AX_EMU_CHECKED
#define AX_EMU_NOINSTR __attribute__((no_sanitize_thread))
#else
#define AX_EMU_NOINSTR
#endif

namespace ax_emu {

// One row of the memory metrics (ax_emu::stop_metrics): a source line's warp-wide accesses of one kernel.
struct MetricRow {
  std::string kernel;  // as written at AX_LAUNCH
  std::string site;    // file:line (function) of the access
  bool shared = false, write = false;
  uint64_t accesses = 0;     // warp-wide accesses
  double bytes_per_lane = 0;  // mean access width
  double wavefronts = 0, ideal_wavefronts = 0;  // shared: sum over accesses
  double sectors = 0, min_sectors = 0;          // global: sum over accesses
};

namespace detail {

struct LaunchState;
struct ThreadCtx;

// ------------------------------------------------------------------------------ device allocations

constexpr size_t kGuardBytes = 256;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;

#if AX_EMU_CHECKED
// Race, initialisation and cp.async checks on (ax_emu::set_checks); off, only the metrics are recorded.
inline bool& checks_enabled() {
  static thread_local bool on = true;
  return on;
}

struct GlobalShadow {
  uint64_t launch = 0;            // launch generation the race fields belong to
  int64_t wblock = -1, rblock = -1;  // linear CTA that wrote / read the byte in that launch
  uint64_t wsite = 0, rsite = 0;
  uint8_t init = 0, rmulti = 0;
};
#endif

struct DeviceAlloc {
  char* raw = nullptr;   // [raw, raw + kGuardBytes) guard | bytes | guard
  char* base = nullptr;
  size_t bytes = 0;
  std::string name;
#if AX_EMU_CHECKED
  std::vector<GlobalShadow> shadow;
#endif
  uintptr_t lo() const { return reinterpret_cast<uintptr_t>(raw); }
  uintptr_t hi() const { return reinterpret_cast<uintptr_t>(base) + bytes + kGuardBytes; }
};

// All device buffers of the process (any host thread may free one: torch frees tensors where it likes).
// The access hooks of a checked build read it without the lock (a checked build runs one host thread).
struct DeviceHeap {
  std::mutex mu;
  std::vector<std::unique_ptr<DeviceAlloc>> allocs;  // sorted by address
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  void bounds() {
    lo = UINTPTR_MAX;
    hi = 0;
    for (auto& a : allocs) {
      lo = std::min(lo, a->lo());
      hi = std::max(hi, a->hi());
    }
  }
};
inline DeviceHeap& device_heap() {
  static DeviceHeap h;
  return h;
}

AX_EMU_NOINSTR inline DeviceAlloc* find_alloc(uintptr_t a) {
  DeviceHeap& h = device_heap();
  if (a < h.lo || a >= h.hi) return nullptr;
  auto& v = h.allocs;
  size_t lo = 0, hi = v.size();
  while (lo < hi) {  // last alloc with lo() <= a
    size_t mid = (lo + hi) / 2;
    if (v[mid]->lo() <= a)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == 0) return nullptr;
  DeviceAlloc* d = v[lo - 1].get();
  return a < d->hi() ? d : nullptr;
}

AX_EMU_NOINSTR inline void* device_malloc_impl(size_t bytes, const char* name) {
  auto d = std::make_unique<DeviceAlloc>();
  const size_t payload = (bytes + 15) / 16 * 16;
  d->raw = static_cast<char*>(::operator new(payload + 2 * kGuardBytes, std::align_val_t(256)));
  d->base = d->raw + kGuardBytes;
  d->bytes = bytes;
  d->name = name ? name : "buffer";
  std::memset(d->raw, kGuardByte, kGuardBytes);
  std::memset(d->base, kPoisonByte, payload);
  std::memset(d->base + bytes, kGuardByte, payload - bytes + kGuardBytes);
#if AX_EMU_ASAN
  __asan_poison_memory_region(d->raw, kGuardBytes);
  __asan_poison_memory_region(d->base + bytes, payload - bytes + kGuardBytes);
#endif
#if AX_EMU_CHECKED
  if (checks_enabled()) d->shadow.resize(bytes);  // off (metrics only): no shadow, no checks of this buffer
#endif
  void* p = d->base;
  DeviceHeap& h = device_heap();
  std::lock_guard<std::mutex> g(h.mu);
  auto it = std::upper_bound(h.allocs.begin(), h.allocs.end(), d->lo(),
                             [](uintptr_t a, const std::unique_ptr<DeviceAlloc>& x) { return a < x->lo(); });
  h.allocs.insert(it, std::move(d));
  h.bounds();
  return p;
}

AX_EMU_NOINSTR inline void device_free_impl(void* p) {
  if (!p) return;
  DeviceHeap& h = device_heap();
  std::lock_guard<std::mutex> g(h.mu);
  for (auto it = h.allocs.begin(); it != h.allocs.end(); ++it) {
    if ((*it)->base != p) continue;
    DeviceAlloc& d = **it;
#if AX_EMU_ASAN
    __asan_unpoison_memory_region(d.raw, d.hi() - d.lo());
#endif
    ::operator delete(d.raw, std::align_val_t(256));
    h.allocs.erase(it);
    h.bounds();
    return;
  }
  throw EmulationError("ax_emu::device_free: pointer was not returned by ax_emu::device_malloc");
}

// Bytes of the guard zones that are no longer the guard pattern (after a launch): a kernel wrote out of
// bounds. Under ASan the zones are poisoned and ASan has reported the write already.
AX_EMU_NOINSTR inline std::string damaged_guard() {
#if AX_EMU_ASAN
  return {};
#else
  DeviceHeap& h = device_heap();
  std::lock_guard<std::mutex> g(h.mu);
  for (auto& up : h.allocs) {
    const DeviceAlloc& d = *up;
    const size_t payload = (d.bytes + 15) / 16 * 16;
    auto scan = [&](const char* lo, size_t n, bool before) -> std::string {
      for (size_t i = 0; i < n; ++i)
        if (static_cast<unsigned char>(lo[i]) != kGuardByte) {
          const long long off = before ? -static_cast<long long>(n - i) : static_cast<long long>(i);
          return "device buffer '" + d.name + "' (" + std::to_string(d.bytes) + " bytes): byte " +
                 (before ? std::to_string(off) + " (before its start)" : std::to_string(off) + " past its end");
        }
      return {};
    };
    std::string s = scan(d.raw, kGuardBytes, true);
    if (s.empty()) s = scan(d.base + d.bytes, payload - d.bytes + kGuardBytes, false);
    if (!s.empty()) return s;
  }
  return {};
#endif
}

#if AX_EMU_CHECKED
// ------------------------------------------------------------------------------ checked-build state

constexpr uint32_t kNoThread = 0xffffffffu;

// One access in the shared-memory shadow: thread (linear id in the block), barrier epoch, the thread's
// sync count at the access, site.
struct AccRec {
  uint32_t epoch = 0, cnt = 0, tid = kNoThread;
  uint64_t site = 0;
};
struct SharedShadow {
  uint64_t gen = 0;  // block generation the entry belongs to (older entries are stale: empty)
  AccRec w, r1, r2;  // last write; up to two reads since (by different threads)
  uint64_t pend_site = 0;
  uint32_t pend_tid = 0, pending = 0;  // destination of a cp.async that has not landed
};

// Accesses of one instruction (site) by the lanes of one warp in the current block, in execution order.
struct LaneAccesses {
  std::vector<uint64_t> addr[32];
  uint32_t size = 0;
  bool shared = false, write = false;
};
struct SiteAcc {  // metrics of one site in one launch
  uint64_t n = 0;
  double bytes = 0, wf = 0, ideal = 0, sec = 0, minsec = 0;
  bool shared = false, write = false;
};

struct CheckState {
  bool checks = true;  // race / init / pending checks (metrics only when false)
  uint64_t launch_gen = 0, block_gen = 0;
  uint32_t bepoch = 0;           // barrier epoch of the block
  std::vector<uint32_t> joint;   // [warp][a][b]: a's sync count after its last collective with b
  std::unordered_map<uint64_t, std::vector<LaneAccesses>> rec;  // site -> per warp (metrics)
  std::unordered_map<uint64_t, SiteAcc> acc;       // per site (metrics)
};

inline std::vector<SharedShadow>& shared_shadow() {
  static thread_local std::vector<SharedShadow> v;
  return v;
}
inline uint64_t next_generation() {
  static thread_local uint64_t g = 0;
  return ++g;
}
#endif

// --------------------------------------------------------------------------------------------- sites

// A site is a program counter (an instrumented access) or, with the top bit set, an index into the
// table of file:line sites the emulator reports itself (cp.async, ldmatrix).
struct SiteTable {
  std::mutex mu;
  std::vector<std::pair<const char*, int>> explicit_sites;
  std::map<std::pair<const char*, int>, uint64_t> index;
  std::unordered_map<uint64_t, std::string> resolved;
};
inline SiteTable& site_table() {
  static SiteTable t;
  return t;
}
constexpr uint64_t kExplicitSite = 1ull << 63;
// Metric keys: a site with the space and direction in bits 62 and 61 (program counters and explicit-site
// indices never reach them).
constexpr uint64_t kKeyShared = 1ull << 62, kKeyWrite = 1ull << 61;
inline uint64_t metric_key(uint64_t site, bool shared, bool write) {
  return site | (shared ? kKeyShared : 0) | (write ? kKeyWrite : 0);
}
inline uint64_t site_of_key(uint64_t key) { return key & ~(kKeyShared | kKeyWrite); }

AX_EMU_NOINSTR inline uint64_t explicit_site(const char* file, int line) {
  SiteTable& t = site_table();
  std::lock_guard<std::mutex> g(t.mu);
  auto key = std::make_pair(file, line);
  auto it = t.index.find(key);
  if (it != t.index.end()) return it->second;
  const uint64_t id = kExplicitSite | t.explicit_sites.size();
  t.explicit_sites.push_back(key);
  t.index.emplace(key, id);
  return id;
}

inline std::string basename_of(const std::string& f) {
  const size_t s = f.rfind('/');
  return s == std::string::npos ? f : f.substr(s + 1);
}

// Formats addr2line -f -i output of one address: the innermost inlined frame first, then the frames
// it was inlined into ("<-"), each as file:line (function).
inline std::string format_frames(const std::vector<std::string>& lines) {
  std::string out;
  for (size_t i = 0; i + 1 < lines.size() && i < 8; i += 2) {
    if (lines[i + 1].rfind("??", 0) == 0) continue;
    std::string fn = lines[i];
    const size_t paren = fn.find('(');
    if (paren != std::string::npos) fn = fn.substr(0, paren);
    std::string loc = basename_of(lines[i + 1]);
    const size_t disc = loc.find(" (discriminator");
    if (disc != std::string::npos) loc = loc.substr(0, disc);
    if (!out.empty()) out += " <- ";
    out += loc + " (" + fn + ")";
  }
  return out;
}

// file:line (function) of program counters, via one addr2line run per object file (the binary must
// have debug info); "pc 0x... in <symbol>" where that fails.
AX_EMU_NOINSTR inline std::vector<std::string> resolve_pcs(const std::vector<uint64_t>& pcs) {
  std::vector<std::string> out(pcs.size());
  std::map<std::string, std::vector<std::pair<size_t, uintptr_t>>> by_file;  // object -> (index, address)
  for (size_t k = 0; k < pcs.size(); ++k) {
    const uintptr_t pc = static_cast<uintptr_t>(pcs[k]);
    char buf[64];
    std::snprintf(buf, sizeof buf, "pc 0x%llx", static_cast<unsigned long long>(pc));
    out[k] = buf;
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void*>(pc), &info) || !info.dli_fname) continue;
    if (info.dli_sname) out[k] += std::string(" in ") + info.dli_sname;
    uintptr_t addr = pc - 1;  // the return address follows the access's call
    const auto* eh = static_cast<const Elf64_Ehdr*>(info.dli_fbase);
    if (eh && eh->e_type == ET_DYN) addr -= reinterpret_cast<uintptr_t>(info.dli_fbase);
    std::string exe = info.dli_fname;
    if (exe.empty() || exe.find('\'') != std::string::npos) continue;
    by_file[exe].emplace_back(k, addr);
  }
  for (auto& kv : by_file) {
    std::string cmd = "addr2line -f -C -i -a -e '" + kv.first + "'";
    for (auto& ia : kv.second) {
      char a[32];
      std::snprintf(a, sizeof a, " 0x%llx", static_cast<unsigned long long>(ia.second));
      cmd += a;
    }
    cmd += " 2>/dev/null";
    FILE* f = popen(cmd.c_str(), "r");
    if (!f) continue;
    std::vector<std::vector<std::string>> per_addr;  // -a prints each address before its frames
    char ln[4096];
    while (std::fgets(ln, sizeof ln, f)) {
      std::string l(ln);
      while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
      if (l.rfind("0x", 0) == 0 && l.find(' ') == std::string::npos && l.find(':') == std::string::npos)
        per_addr.emplace_back();
      else if (!per_addr.empty())
        per_addr.back().push_back(l);
    }
    pclose(f);
    for (size_t i = 0; i < kv.second.size() && i < per_addr.size(); ++i) {
      const std::string s = format_frames(per_addr[i]);
      if (!s.empty()) out[kv.second[i].first] = s;
    }
  }
  return out;
}

AX_EMU_NOINSTR inline std::string site_name(uint64_t site) {
  if (site == 0) return "?";
  SiteTable& t = site_table();
  {
    std::lock_guard<std::mutex> g(t.mu);
    if (site & kExplicitSite) {
      const auto& e = t.explicit_sites[site & ~kExplicitSite];
      return basename_of(e.first ? e.first : "?") + ":" + std::to_string(e.second);
    }
    auto it = t.resolved.find(site);
    if (it != t.resolved.end()) return it->second;
  }
  std::string s = resolve_pcs({site})[0];
  std::lock_guard<std::mutex> g(t.mu);
  t.resolved.emplace(site, s);
  return s;
}

}  // namespace detail
}  // namespace ax_emu
