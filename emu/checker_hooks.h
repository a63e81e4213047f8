// checker_hooks.h - the emulator's memory checks at its sync points and accesses (see checker.h).
// Included by cuda_emu.h after the launch state; not a public header.
#pragma once

#include <algorithm>
#include <set>

namespace ax_emu {
namespace detail {

#if AX_EMU_CHECKED

// Set while a hook runs: accesses of instrumented code the hook calls (the emulator's own helpers) are not
// checked again.
inline thread_local bool g_in_hook = false;

// Ends the calling kernel thread on a memory-check error: records the error and returns to the scheduler
// for good (the fiber is abandoned, not unwound: the access hooks are called where the compiler assumes
// nothing throws). The scheduler then stops the block and the launch throws EmulationError.
[[noreturn]] AX_EMU_NOINSTR inline void hook_fail(const std::string& msg) {
  LaunchState& L = *g_tls.L;
  ThreadCtx& t = *g_tls.cur;
  record_error(L, msg);
  t.state = TState::Done;
  g_in_hook = false;
  ctx_switch(t.ctx, L.sched);
  std::abort();  // never resumed
}

inline std::string thread_str(const LaunchState& L, uint32_t tid) { return u3str(L.threads[tid].tid); }
inline std::string block_str(const LaunchState& L, int64_t b) {
  const uint64_t gx = L.grid.x, gy = L.grid.y;
  return u3str(uint3{unsigned(b % gx), unsigned((b / gx) % gy), unsigned(b / (gx * gy))});
}
inline std::string region_str(const SharedAlloc& r) {
  return r.key ? "AX_SHARED '" + std::string(r.name) + "'" : std::string(r.name);
}

// The earlier access r happens before the current access of t: same thread, a block barrier since, or a
// warp collective that joined r's thread and t after r.
AX_EMU_NOINSTR inline bool ordered(const LaunchState& L, const AccRec& r, const ThreadCtx& t) {
  if (r.tid == kNoThread || r.tid == t.linear || r.epoch != L.chk.bepoch) return true;
  return r.tid / 32 == t.warp && L.chk.joint[(size_t(t.warp) * 32 + r.tid % 32) * 32 + t.lane] > r.cnt;
}

// ------------------------------------------------------------------------------------------ metrics

AX_EMU_NOINSTR inline void record_metric(LaunchState& L, const ThreadCtx& t, uint64_t site, uintptr_t a, size_t n,
                                         bool write, bool shared) {
  // One instruction may touch both spaces (cp.async reads global and writes shared): keyed apart.
  std::vector<LaneAccesses>& per_warp = L.chk.rec[metric_key(site, shared, write)];
  if (per_warp.empty()) per_warp.resize(L.nwarps);
  LaneAccesses& la = per_warp[t.warp];
  if (la.size == 0) {
    la.size = uint32_t(n);
    la.shared = shared;
    la.write = write;
  }
  la.addr[t.lane].push_back(a);
}

// Shared: wavefronts of one warp-wide access (32 banks of 4 bytes; 8- and 16-byte accesses in 2 and 4
// phases of 16 and 8 lanes) and the conflict-free count. Global: 32-byte sectors and the minimum.
AX_EMU_NOINSTR inline void score_access(const uint64_t* addr, const bool* active, uint32_t size, bool shared,
                                        SiteAcc& acc) {
  unsigned lanes = 0;
  for (int l = 0; l < 32; ++l) lanes += active[l];
  if (!lanes) return;
  acc.n += 1;
  acc.bytes += size;
  if (shared) {
    const int phases = size >= 16 ? 4 : size == 8 ? 2 : 1, per = 32 / phases;
    std::set<uint64_t> all;
    double wf = 0;
    for (int ph = 0; ph < phases; ++ph) {
      std::set<uint64_t> words[32];
      bool any = false;
      for (int l = ph * per; l < (ph + 1) * per; ++l) {
        if (!active[l]) continue;
        any = true;
        for (uint64_t w = addr[l] / 4; w <= (addr[l] + size - 1) / 4; ++w) {
          words[w % 32].insert(w);
          all.insert(w);
        }
      }
      size_t worst = 0;
      for (auto& b : words) worst = std::max(worst, b.size());
      if (any) wf += double(worst);
    }
    acc.wf += wf;
    acc.ideal += std::max<double>(1.0, double((all.size() + 31) / 32));
  } else {
    std::vector<std::pair<uint64_t, uint64_t>> iv;
    std::set<uint64_t> sectors;
    for (int l = 0; l < 32; ++l) {
      if (!active[l]) continue;
      iv.emplace_back(addr[l], addr[l] + size);
      for (uint64_t s = addr[l] / 32; s <= (addr[l] + size - 1) / 32; ++s) sectors.insert(s);
    }
    std::sort(iv.begin(), iv.end());
    uint64_t bytes = 0, lo = iv[0].first, hi = iv[0].second;
    for (size_t i = 1; i < iv.size(); ++i) {
      if (iv[i].first > hi) {
        bytes += hi - lo;
        lo = iv[i].first;
      }
      hi = std::max(hi, iv[i].second);
    }
    bytes += hi - lo;
    acc.sec += double(sectors.size());
    acc.minsec += double((bytes + 31) / 32);
  }
}

// The k-th execution of a site by the lanes of a warp is one warp-wide access (SIMT lock step).
AX_EMU_NOINSTR inline void score_block(LaunchState& L) {
  for (auto& kv : L.chk.rec) {
    for (LaneAccesses& la : kv.second) {
      if (la.size == 0) continue;
      SiteAcc& acc = L.chk.acc[kv.first];
      acc.shared = la.shared;
      acc.write = la.write;
      size_t most = 0;
      for (auto& v : la.addr) most = std::max(most, v.size());
      uint64_t addr[32];
      bool active[32];
      for (size_t k = 0; k < most; ++k) {
        for (int l = 0; l < 32; ++l) {
          active[l] = k < la.addr[l].size();
          addr[l] = active[l] ? la.addr[l][k] : 0;
        }
        score_access(addr, active, la.size, la.shared, acc);
      }
    }
  }
  L.chk.rec.clear();
}

// --------------------------------------------------------------------------------------- accesses

AX_EMU_NOINSTR inline void shared_access(LaunchState& L, ThreadCtx& t, uintptr_t a, size_t n, bool write,
                                         uint64_t site) {
  const SharedAlloc* r = shared_region(L, reinterpret_cast<const void*>(a), n);
  if (!r) {
    const SharedAlloc* near = nullptr;
    for (const SharedAlloc& x : L.regions)
      if (reinterpret_cast<uintptr_t>(x.ptr) <= a) near = &x;
    const std::string where =
        near ? "byte " + std::to_string(int64_t(a - reinterpret_cast<uintptr_t>(near->ptr))) + " of " + region_str(*near) +
                   " (" + std::to_string(near->size) + " bytes)"
             : "before the dynamic shared memory";
    hook_fail("out-of-bounds shared-memory " + std::string(write ? "write" : "read") + " of " + std::to_string(n) +
              " bytes at " + where + ", by thread " + u3str(t.tid) + " at " + site_name(site));
  }
  if (config().metrics) record_metric(L, t, site, a, n, write, true);
  if (!L.chk.checks) return;
  CheckState& C = L.chk;
  std::vector<SharedShadow>& sh = shared_shadow();
  const size_t off0 = a - reinterpret_cast<uintptr_t>(L.arena);
  const AccRec cur{C.bepoch, t.nsync, t.linear, site};
  const size_t byte0 = a - reinterpret_cast<uintptr_t>(r->ptr);
  auto race = [&](const AccRec& o, bool o_write, size_t i) {
    hook_fail("shared-memory race (racecheck): thread " + u3str(t.tid) + " " + (write ? "writes" : "reads") + " byte " +
              std::to_string(byte0 + i) + " of " + region_str(*r) + " at " + site_name(site) + ", which thread " +
              thread_str(L, o.tid) + " " + (o_write ? "wrote" : "read") + " at " + site_name(o.site) +
              " in the same barrier interval (no __syncthreads, and no warp collective joining the two threads, "
              "between the accesses)");
  };
  for (size_t i = 0; i < n; ++i) {
    SharedShadow& e = sh[off0 + i];
    if (e.gen != C.block_gen) {
      e = SharedShadow{};
      e.gen = C.block_gen;
    }
    if (e.pending)
      hook_fail("thread " + u3str(t.tid) + " " + (write ? "writes" : "reads") + " byte " + std::to_string(byte0 + i) +
                " of " + region_str(*r) + " at " + site_name(site) + " while the cp.async that thread " +
                thread_str(L, e.pend_tid) + " issued at " + site_name(e.pend_site) +
                " into it is still in flight (it lands at the issuer's cp_async_wait; a barrier must follow the "
                "wait before other threads touch it, and a refill must wait until every reader is done)");
    if (!ordered(L, e.w, t)) race(e.w, true, i);
    if (write) {
      if (!ordered(L, e.r1, t)) race(e.r1, false, i);
      if (!ordered(L, e.r2, t)) race(e.r2, false, i);
      e.w = cur;
      e.r1 = e.r2 = AccRec{};
    } else if (e.r1.tid == kNoThread || e.r1.tid == t.linear || ordered(L, e.r1, t)) {
      e.r1 = cur;
    } else {
      e.r2 = cur;
    }
  }
}

AX_EMU_NOINSTR inline void global_access(LaunchState& L, ThreadCtx& t, DeviceAlloc& d, uintptr_t a, size_t n,
                                         bool write, uint64_t site) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(d.base);
  if (a < b || a + n > b + d.bytes) {
    const int64_t off = int64_t(a) - int64_t(b);
    hook_fail("out-of-bounds global " + std::string(write ? "write" : "read") + " of " + std::to_string(n) +
              " bytes at byte " + std::to_string(off) + " of device buffer '" + d.name + "' (" +
              std::to_string(d.bytes) + " bytes), by thread " + u3str(t.tid) + " at " + site_name(site));
  }
  if (config().metrics) record_metric(L, t, site, a, n, write, false);
  CheckState& C = L.chk;
  if (!C.checks || d.shadow.empty()) return;
  const int64_t blk = int64_t(L.linear_block);
  const size_t off0 = a - b;
  auto where = [&](size_t i) {
    return "byte " + std::to_string(off0 + i) + " of device buffer '" + d.name + "'";
  };
  auto me = [&]() { return "block " + block_str(L, blk) + " thread " + u3str(t.tid); };
  for (size_t i = 0; i < n; ++i) {
    GlobalShadow& g = d.shadow[off0 + i];
    if (!write && !g.init)
      hook_fail("read of uninitialised global memory (initcheck): thread " + u3str(t.tid) + " reads " + where(i) +
                " at " + site_name(site) + ", which neither the host nor a kernel has written");
    if (g.launch != C.launch_gen) {
      g.launch = C.launch_gen;
      g.wblock = g.rblock = -1;
      g.rmulti = 0;
    }
    if (write) {
      if (g.wblock >= 0 && g.wblock != blk)
        hook_fail("global-memory race between CTAs of one launch: " + me() + " writes " + where(i) + " at " +
                  site_name(site) + ", which block " + block_str(L, g.wblock) + " wrote at " + site_name(g.wsite) +
                  " (CTAs of a launch run in no defined order)");
      if (g.rblock >= 0 && (g.rblock != blk || g.rmulti))
        hook_fail("global-memory race between CTAs of one launch: " + me() + " writes " + where(i) + " at " +
                  site_name(site) + ", which block " + block_str(L, g.rblock) + " read at " + site_name(g.rsite) +
                  " (CTAs of a launch run in no defined order)");
      g.wblock = blk;
      g.wsite = site;
      g.init = 1;
    } else {
      if (g.wblock >= 0 && g.wblock != blk)
        hook_fail("global-memory race between CTAs of one launch: " + me() + " reads " + where(i) + " at " +
                  site_name(site) + ", which block " + block_str(L, g.wblock) + " wrote at " + site_name(g.wsite) +
                  " in the same launch (CTAs of a launch run in no defined order; a later launch sees it)");
      if (g.rblock < 0) {
        g.rblock = blk;
        g.rsite = site;
      } else if (g.rblock != blk) {
        g.rmulti = 1;
      }
    }
  }
}

// A GPU faults on an access of 2, 4, 8 or 16 bytes that is not aligned to its size (a 16-byte vector load from a
// 2-byte aligned row, say). `natural`: the compiler issued it as an aligned access (the __tsan_read<N> hooks, not
// the __tsan_unaligned_* ones it uses where the host code itself may be unaligned).
AX_EMU_NOINSTR inline void check_alignment(const ThreadCtx& t, uintptr_t a, size_t n, bool write, uint64_t site,
                                           const char* space) {
  if (n > 1 && n <= 16 && (a & (n - 1)) != 0)
    hook_fail("misaligned " + std::to_string(n) + "-byte " + space + (write ? " write" : " read") + " at address " +
              std::to_string(a) + " (" + std::to_string(a % n) + " bytes past alignment), by thread " + u3str(t.tid) +
              " at " + site_name(site) + " (on a GPU: misaligned address)");
}

// Every load and store of instrumented kernel code: shared memory, device buffers; the rest (the
// thread's stack, the emulator's own state, host memory) is not tracked.
AX_EMU_NOINSTR inline void check_access(const void* p, size_t n, bool write, uint64_t site, bool natural = false) {
  ThreadCtx* t = g_tls.cur;
  if (!t) return;  // host code
  LaunchState& L = *g_tls.L;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t stack = reinterpret_cast<uintptr_t>(t->stack.lo);
  if (a >= stack && a < stack + t->stack.size) return;
  const uintptr_t arena = reinterpret_cast<uintptr_t>(L.arena);
  if (a >= arena && a < arena + L.arena_cap) {
    if (natural) check_alignment(*t, a, n, write, site, "shared");
    return shared_access(L, *t, a, n, write, site);
  }
  if (DeviceAlloc* d = find_alloc(a)) {
    if (natural) check_alignment(*t, a, n, write, site, "global");
    global_access(L, *t, *d, a, n, write, site);
  }
}
AX_EMU_NOINSTR inline void on_access(const void* p, size_t n, bool write, uint64_t site, bool natural = false) {
  if (g_in_hook) return;
  g_in_hook = true;
  check_access(p, n, write, site, natural);
  g_in_hook = false;
}

// ------------------------------------------------------------------------ sync points and launches

AX_EMU_NOINSTR inline void launch_started(LaunchState& L) {
  CheckState& C = L.chk;
  C.checks = checks_enabled();
  C.launch_gen = next_generation();
  std::vector<SharedShadow>& sh = shared_shadow();
  if (sh.size() < L.arena_cap) sh.resize(L.arena_cap);
  C.joint.assign(size_t(L.nwarps) * 1024, 0u);
  C.acc.clear();
}
AX_EMU_NOINSTR inline void block_started(LaunchState& L) {
  CheckState& C = L.chk;
  C.block_gen = next_generation();
  C.bepoch = 0;
  std::fill(C.joint.begin(), C.joint.end(), 0u);
  C.rec.clear();
}
AX_EMU_NOINSTR inline void block_finished(LaunchState& L) {
  if (config().metrics) score_block(L);
}
AX_EMU_NOINSTR inline void launch_finished(LaunchState& L) {
  Config& cfg = config();
  if (!cfg.metrics) return;
  for (auto& kv : L.chk.acc) {
    const SiteAcc& s = kv.second;
    auto key = std::make_pair(std::string(L.kname), kv.first);
    auto it = cfg.metric_index.find(key);
    if (it == cfg.metric_index.end()) {
      it = cfg.metric_index.emplace(key, cfg.metric_rows.size()).first;
      MetricRow row;
      row.kernel = L.kname;
      row.shared = s.shared;
      row.write = s.write;
      cfg.metric_rows.push_back(row);
      cfg.metric_sites.push_back(kv.first);
    }
    MetricRow& row = cfg.metric_rows[it->second];
    const double n0 = double(row.accesses);
    row.accesses += s.n;
    row.bytes_per_lane = (row.bytes_per_lane * n0 + s.bytes) / std::max<double>(1.0, double(row.accesses));
    row.wavefronts += s.wf;
    row.ideal_wavefronts += s.ideal;
    row.sectors += s.sec;
    row.min_sectors += s.minsec;
  }
}

AX_EMU_NOINSTR inline void barrier_done(LaunchState& L) { ++L.chk.bepoch; }

AX_EMU_NOINSTR inline void collective_done(LaunchState& L, unsigned w, uint32_t eff) {
  for (uint32_t m = eff; m; m &= m - 1) ++L.thread(w, __builtin_ctz(m)).nsync;
  uint32_t* J = L.chk.joint.data() + size_t(w) * 1024;
  for (uint32_t ma = eff; ma; ma &= ma - 1) {
    const unsigned a = __builtin_ctz(ma);
    const uint32_t c = L.thread(w, a).nsync;
    for (uint32_t mb = eff; mb; mb &= mb - 1) J[a * 32 + __builtin_ctz(mb)] = c;
  }
}

AX_EMU_NOINSTR inline void set_pending(LaunchState& L, void* dst, bool on, uint32_t tid, uint64_t site) {
  std::vector<SharedShadow>& sh = shared_shadow();
  const size_t off0 = reinterpret_cast<uintptr_t>(dst) - reinterpret_cast<uintptr_t>(L.arena);
  for (size_t i = 0; i < 16; ++i) {
    SharedShadow& e = sh[off0 + i];
    if (e.gen != L.chk.block_gen) continue;
    e.pending = on;
    e.pend_tid = tid;
    e.pend_site = site;
  }
}

AX_EMU_NOINSTR inline void cp_async_land(LaunchState& L, const CpCopy& c) {
  std::memcpy(c.dst, c.bytes, 16);
  if (L.chk.checks) set_pending(L, c.dst, false, 0, 0);
}

// A cp.async reads its source now (a global read of the issuing thread) and writes its destination later:
// the write is checked for races at the issue, and the destination is pending until the copy lands.
AX_EMU_NOINSTR inline void cp_async_issued(LaunchState& L, ThreadCtx& t, Site s, void* dst, const void* src) {
  const uint64_t site = explicit_site(s.file, s.line);
  if (src) check_access(src, 16, false, site);
  shared_access(L, t, reinterpret_cast<uintptr_t>(dst), 16, true, site);
  if (L.chk.checks) set_pending(L, dst, true, t.linear, site);
}

// After a sync point of thread t each of its copies in flight lands with probability 1/2 (a copy lands at
// some moment between its issue and its wait).
AX_EMU_NOINSTR inline void after_sync(LaunchState& L, ThreadCtx& t) {
  if (!L.chk.checks || t.cp.empty()) return;
  size_t keep = 0;
  for (size_t i = 0; i < t.cp.size(); ++i) {
    if (L.rng.below(2))
      cp_async_land(L, t.cp[i]);
    else
      t.cp[keep++] = t.cp[i];
  }
  t.cp.resize(keep);
}

AX_EMU_NOINSTR inline void ldmatrix_read(LaunchState& L, ThreadCtx& t, Site s, const void* row) {
  shared_access(L, t, reinterpret_cast<uintptr_t>(row), 16, false, explicit_site(s.file, s.line));
}

// Host writes (mark_initialized) and output poisoning (poison) of device buffers.
AX_EMU_NOINSTR inline void set_initialized(const void* p, size_t bytes, bool init) {
  if (!p || !bytes) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  DeviceAlloc* d = find_alloc(a);
  if (!d || d->shadow.empty()) return;
  const uintptr_t b = reinterpret_cast<uintptr_t>(d->base);
  const size_t lo = a > b ? a - b : 0, hi = std::min<size_t>(d->bytes, a + bytes - b);
  for (size_t i = lo; i < hi; ++i) d->shadow[i].init = init;
}

// Atomics are not checked for races (they are atomic); a write makes the bytes initialised.
AX_EMU_NOINSTR inline void atomic_touch(const void* p, size_t n) {
  if (g_tls.cur) set_initialized(p, n, true);
}

#else  // !AX_EMU_CHECKED: the sync-point and launch hooks do nothing; cp.async lands at the wait.

inline void launch_started(LaunchState&) {}
inline void block_started(LaunchState&) {}
inline void block_finished(LaunchState&) {}
inline void launch_finished(LaunchState&) {}
inline void barrier_done(LaunchState&) {}
inline void collective_done(LaunchState&, unsigned, uint32_t) {}
inline void cp_async_land(LaunchState&, const CpCopy& c) { std::memcpy(c.dst, c.bytes, 16); }
inline void cp_async_issued(LaunchState&, ThreadCtx&, Site, void*, const void*) {}
inline void after_sync(LaunchState&, ThreadCtx&) {}
inline void ldmatrix_read(LaunchState&, ThreadCtx&, Site, const void*) {}
inline void set_initialized(const void*, size_t, bool) {}
inline void atomic_touch(const void*, size_t) {}

#endif

}  // namespace detail
}  // namespace ax_emu

#if AX_EMU_CHECKED
// The instrumentation's entry points (GCC / Clang -fsanitize=thread), defined here instead of by the
// ThreadSanitizer runtime, which is not linked. Weak: every translation unit that includes the emulator
// defines them.
#define AX_EMU_HOOK extern "C" __attribute__((weak, used, no_sanitize_thread, visibility("hidden")))
#define AX_EMU_ACCESS_HOOKS(N)                                                                                   \
  AX_EMU_HOOK void __tsan_read##N(void* p) {                                                                     \
    ::ax_emu::detail::on_access(p, N, false, reinterpret_cast<uint64_t>(__builtin_return_address(0)), true);   \
  }                                                                                                              \
  AX_EMU_HOOK void __tsan_write##N(void* p) {                                                                    \
    ::ax_emu::detail::on_access(p, N, true, reinterpret_cast<uint64_t>(__builtin_return_address(0)), true);    \
  }                                                                                                              \
  AX_EMU_HOOK void __tsan_unaligned_read##N(void* p) {                                                           \
    ::ax_emu::detail::on_access(p, N, false, reinterpret_cast<uint64_t>(__builtin_return_address(0)));         \
  }                                                                                                              \
  AX_EMU_HOOK void __tsan_unaligned_write##N(void* p) {                                                          \
    ::ax_emu::detail::on_access(p, N, true, reinterpret_cast<uint64_t>(__builtin_return_address(0)));          \
  }
AX_EMU_ACCESS_HOOKS(1)
AX_EMU_ACCESS_HOOKS(2)
AX_EMU_ACCESS_HOOKS(4)
AX_EMU_ACCESS_HOOKS(8)
AX_EMU_ACCESS_HOOKS(16)
#undef AX_EMU_ACCESS_HOOKS
AX_EMU_HOOK void __tsan_read_range(void* p, long n) {
  ::ax_emu::detail::on_access(p, size_t(n), false, reinterpret_cast<uint64_t>(__builtin_return_address(0)));
}
AX_EMU_HOOK void __tsan_write_range(void* p, long n) {
  ::ax_emu::detail::on_access(p, size_t(n), true, reinterpret_cast<uint64_t>(__builtin_return_address(0)));
}
AX_EMU_HOOK void __tsan_init() {}
AX_EMU_HOOK void __tsan_func_entry(void*) {}
AX_EMU_HOOK void __tsan_func_exit(void*) {}
AX_EMU_HOOK void __tsan_vptr_update(void** p, void* v) { *p = v; }
AX_EMU_HOOK void __tsan_vptr_read(void**) {}
// Atomics of host code in instrumented translation units (e.g. guards of function-local statics).
AX_EMU_HOOK unsigned char __tsan_atomic8_load(const volatile void* a, int) {
  return __atomic_load_n(static_cast<const volatile unsigned char*>(a), __ATOMIC_SEQ_CST);
}
AX_EMU_HOOK void __tsan_atomic8_store(volatile void* a, unsigned char v, int) {
  __atomic_store_n(static_cast<volatile unsigned char*>(a), v, __ATOMIC_SEQ_CST);
}
AX_EMU_HOOK unsigned int __tsan_atomic32_load(const volatile void* a, int) {
  return __atomic_load_n(static_cast<const volatile unsigned int*>(a), __ATOMIC_SEQ_CST);
}
AX_EMU_HOOK void __tsan_atomic32_store(volatile void* a, unsigned int v, int) {
  __atomic_store_n(static_cast<volatile unsigned int*>(a), v, __ATOMIC_SEQ_CST);
}
AX_EMU_HOOK unsigned long __tsan_atomic64_load(const volatile void* a, int) {
  return __atomic_load_n(static_cast<const volatile unsigned long*>(a), __ATOMIC_SEQ_CST);
}
AX_EMU_HOOK void __tsan_atomic64_store(volatile void* a, unsigned long v, int) {
  __atomic_store_n(static_cast<volatile unsigned long*>(a), v, __ATOMIC_SEQ_CST);
}
AX_EMU_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
AX_EMU_HOOK void __tsan_atomic_signal_fence(int) {}
#undef AX_EMU_HOOK
#endif
