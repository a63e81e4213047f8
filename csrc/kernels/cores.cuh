// r-space core kernels of the AntiPaSTO family (docs/SPEC.md §1-5), forward and backward, on p (n, r)
// row-major in the activation dtype T (float, double, __half, __nv_bfloat16), accumulating in
// acc_t (double for double, else float); small parameters come in acc_t.
//
//   diag    h = p * s,  s = S * (1 + ELU(coeff g'))  (gain: antipasto / corda)
//                       s = S + coeff * delta_s      (rot with rotate_basis "none")
//   rot     V side h_b = (p_b R_b^T) * s_b,  U side h_b = (p * s)_b R_b
//   dplr    h = p * s + coeff (p A^T) B^T
//   ablate  h = p S - C ((p S C) * coeff a)
//
// Steering (CoreParams::entries, coeffs): the rows form groups of consecutive rows, each with its coefficient (and
// rot's rotation set); the grid holds a fixed number of CTAs per group and no CTA's rows cross a group, so a CTA
// reads one coefficient. Unsteered calls are one group.
//
// Forward: one CTA per tile of rows, all r columns; s (computed in-kernel from S, g / delta_s,
// coeff, suppress_only) and the small parameters staged in shared memory (R, A/B, C read through
// the same pointer from global memory when they do not fit next to a useful row tile).
//
// Backward: dp per row, and the parameter gradients reduced deterministically in two stages, no
// float atomics: CTA c owns chunk c of the rows (the chunking of api.h's core_rows_per_chunk, as every
// kernel set chunks its rows), accumulates each parameter-gradient entry in row order into its own
// workspace slice (one thread per entry), and reduce_partials_kernel sums the slices per group in CTA order,
// applies the chain-rule factor at the group's coefficient and sums the groups in order. The result is the same bits run to run. The per-entry
// arithmetic mirrors csrc/kernels/rowcore.h (gain, rot: so without FMA contraction, in the CPU
// emulation, it equals the C++ CPU kernel set bit for bit) and tests/cpp/row_oracles.h (dplr, ablate:
// the CPU kernel set sums those in its own SIMD order).
//
// Torch-free; compiled by nvcc (kernels.cu) and by the host compiler with AX_EMULATE_CUDA.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "csrc/kernels/api.h"
#include "csrc/kernels/kernel_ns.h"
#include "csrc/kernels/math.h"
#include "emu/portability.cuh"

namespace ax {
namespace AX_KERNEL_NS {
namespace kern {

constexpr int kCoreThreads = 256;
constexpr int kCoreMaxTileRows = 32;
constexpr int64_t kDiagElemsPerCta = 8192;     // elements (rows x r) per CTA of the elementwise forward

inline unsigned blocks_for(int64_t n, int64_t per_block) { return unsigned((n + per_block - 1) / per_block); }

enum ScaleMode : int { kScaleGain = 0, kScaleAdditive = 1 };
enum FinalMode : int { kFinalNone = 0, kFinalGain = 1, kFinalCoeff = 2 };

// Row tile of a CTA: `fixed` accumulators always staged, `params` staged when they leave room for
// 8 rows (else read from global), `per_row` accumulators per tile row; at most max_rows rows.
struct TilePlan {
  int rows;
  bool stage;
  size_t smem;
};
inline TilePlan plan_tile(const char* op, int64_t r, int64_t fixed, int64_t params, int64_t per_row,
                          size_t acc_bytes, int64_t max_rows) {
  const int64_t budget = int64_t(kSmemBudget / acc_bytes);
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>(max_rows, kCoreMaxTileRows));
  const bool stage = fixed + params + per_row * std::min<int64_t>(want, 8) <= budget;
  const int64_t avail = budget - fixed - (stage ? params : 0);
  const int64_t rows = per_row > 0 ? std::min(want, avail / per_row) : want;
  if (avail < 0 || rows < 1)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": r = " + std::to_string(r) +
                                " is too wide for one row tile in " + std::to_string(kSmemBudget) +
                                " bytes of shared memory");
  return TilePlan{int(rows), stage, size_t(fixed + (stage ? params : 0) + rows * per_row) * acc_bytes};
}

// The launches of core C, next to its kernels; the launchers (launch_cores.cuh) reach them through with_core:
//   static constexpr int final_mode;   the chain-rule factor of dparams entries < r in the second stage
//   static TilePlan tile(const CoreParams&, bool backward, size_t acc_bytes, int64_t max_rows);
//   template <typename T> static void forward(const CoreCall&, const TilePlan&, ax::stream_t);         n > 0
//   template <typename T> static void backward(const CoreCall&, const TilePlan&, int64_t chunk, ax::stream_t);
//     the first stage (dp and the per-CTA partials of dparams in the workspace), n > 0
template <Core C>
struct CoreLaunch;

// ---------------------------------------------------------------------------------- element access

template <typename T>
struct acc_of {
  using type = float;
};
template <>
struct acc_of<double> {
  using type = double;
};

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t ld(const T* p) {
  return static_cast<acc_t>(*p);
}
template <>
__device__ __forceinline__ float ld<float, __half>(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float ld<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T, typename acc_t>
__device__ __forceinline__ void st(T* p, acc_t v) {
  *p = static_cast<T>(v);
}
template <>
__device__ __forceinline__ void st<__half, float>(__half* p, float v) {
  *p = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void st<__nv_bfloat16, float>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// s_j of the diagonal cores (same expressions as ax::gain_scales / ax::additive_scales).
template <typename acc_t>
__device__ __forceinline__ acc_t diag_scale(int mode, acc_t S, acc_t x, acc_t coeff, bool suppress_only) {
  return mode == kScaleGain ? gain_scale<acc_t>(S, x, coeff, suppress_only, nullptr) : S + coeff * x;
}

// Copies n accumulators global -> shared (block-strided).
template <typename acc_t>
__device__ __forceinline__ void stage(acc_t* dst, const acc_t* src, int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = __ldg(src + i);
}

// ------------------------------------------------------------------------- 16-byte vector access
//
// A vector is 16 bytes of T (one 128-bit global access): vec_elems<T> elements, whose accumulators are one or two
// 16-byte packs (float / double: one; half / bfloat16 widened to float: two). The lanes of a warp hold consecutive
// vectors; a lane with two packs moves them in the order (lane / 4) % 2 picks, so that the 8 lanes of each quarter
// warp (one shared-memory wavefront of 16-byte accesses) cover 8 distinct 16-byte bank groups.

template <typename T>
__host__ __device__ constexpr int vec_elems() {
  return int(16 / sizeof(T));
}
// 16 bytes of accumulators as a CUDA vector type (its loads and stores are 128-bit).
template <typename acc_t>
struct Pack;
template <>
struct Pack<float> {
  using type = float4;
  static __device__ __forceinline__ float4 make(const float* a) { return make_float4(a[0], a[1], a[2], a[3]); }
  static __device__ __forceinline__ void store(float* dst, float4 v) { ax::st_shared_v4(dst, v); }
  // a when f is 0, b when f is 1, by bit masks: no branch for any compiler to make of it (lanes that took different
  // branches would issue the stores as two half-empty accesses)
  static __device__ __forceinline__ float4 pick(int f, const float4& a, const float4& b) {
    const unsigned m = 0u - unsigned(f);
    auto sel = [m](float x, float y) { return __uint_as_float((__float_as_uint(x) & ~m) | (__float_as_uint(y) & m)); };
    return make_float4(sel(a.x, b.x), sel(a.y, b.y), sel(a.z, b.z), sel(a.w, b.w));
  }
  static __device__ __forceinline__ void split(const float4& v, float* a) {
    a[0] = v.x;
    a[1] = v.y;
    a[2] = v.z;
    a[3] = v.w;
  }
};
template <>
struct Pack<double> {
  using type = double2;
  static __device__ __forceinline__ double2 make(const double* a) { return make_double2(a[0], a[1]); }
  static __device__ __forceinline__ void store(double* dst, double2 v) { *reinterpret_cast<double2*>(dst) = v; }
  static __device__ __forceinline__ void split(const double2& v, double* a) {
    a[0] = v.x;
    a[1] = v.y;
  }
};
template <typename T>
struct alignas(16) Vec {
  T e[vec_elems<T>()];
};
__device__ __forceinline__ bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }
// True when rows of width r starting at x, and a shared tile at dst with row stride ldd, take vector access.
template <typename T, typename acc_t>
__device__ __forceinline__ bool vec_rows(const T* x, int r, const acc_t* dst, int ldd) {
  return r % vec_elems<T>() == 0 && ldd % int(16 / sizeof(acc_t)) == 0 && aligned16(x) && aligned16(dst);
}
// One vector of T at src (16-byte aligned); its elements as accumulators.
template <typename T>
__device__ __forceinline__ Vec<T> ld_vec(const T* src) {
  return *reinterpret_cast<const Vec<T>*>(src);
}
template <typename T, typename acc_t>
__device__ __forceinline__ void widen(acc_t (&a)[vec_elems<T>()], const Vec<T>& x) {
#pragma unroll
  for (int q = 0; q < vec_elems<T>(); ++q) a[q] = ld<acc_t>(x.e + q);
}
// Accumulators a as one vector of T at dst (16-byte aligned).
template <typename T, typename acc_t>
__device__ __forceinline__ void st_vec(T* dst, const acc_t (&a)[vec_elems<T>()]) {
  Vec<T> x;
#pragma unroll
  for (int q = 0; q < vec_elems<T>(); ++q) st(x.e + q, a[q]);
  *reinterpret_cast<Vec<T>*>(dst) = x;
}
// The accumulators of one vector into shared memory at dst (16-byte aligned), as 16-byte stores.
template <int V, typename acc_t>
__device__ __forceinline__ void st_packs(acc_t* dst, const acc_t (&a)[V]) {
  using P = Pack<acc_t>;
  constexpr int A = int(16 / sizeof(acc_t));
  static_assert(V == A || V == 2 * A, "a vector's accumulators are one or two packs");
  const typename P::type lo = P::make(a);
  if constexpr (V == A) {
    P::store(dst, lo);
  } else {
    const typename P::type hi = P::make(a + A);
    const int f = (threadIdx.x >> 2) & 1;
    P::store(dst + f * A, P::pick(f, lo, hi));
    P::store(dst + (1 - f) * A, P::pick(f, hi, lo));
  }
}
// The accumulators of one vector from shared memory at src (16-byte aligned), as 16-byte loads.
template <int V, typename acc_t>
__device__ __forceinline__ void ld_packs(acc_t (&a)[V], const acc_t* src) {
  using P = Pack<acc_t>;
  constexpr int A = int(16 / sizeof(acc_t));
  static_assert(V == A || V == 2 * A, "a vector's accumulators are one or two packs");
  const typename P::type* s = reinterpret_cast<const typename P::type*>(src);
  if constexpr (V == A) {
    P::split(s[0], a);
  } else {
    const int f = (threadIdx.x >> 2) & 1;
    const typename P::type x = s[f];
    const typename P::type y = s[1 - f];
    P::split(P::pick(f, x, y), a);
    P::split(P::pick(f, y, x), a + A);
  }
}

// Shared-memory row strides against bank conflicts (32 banks of 4 bytes).
// odd_ld(n): rows of n read by the lanes of consecutive rows at one column (rot's R, dplr's B, ablate's C): an odd
// stride puts 32 rows in 32 banks (a stride of 8 is 8-way conflicted).
// tile_ld(r, width): a row tile that the lanes of one instruction read on different rows, `width` consecutive columns
// per row (dplr, ablate: lanes per row and low-rank index): an odd number of width-element groups (width 4 or 8)
// keeps the rows 16-byte aligned for the vector fills and puts 32 / width rows in distinct banks (a stride of 256 puts
// them all in one bank).
__host__ __device__ inline int odd_ld(int n) { return n % 2 == 0 ? n + 1 : n; }
__host__ __device__ inline int tile_ld(int r, int width = 4) {
  const int groups = (r + width - 1) / width;
  return width * (groups % 2 == 0 ? groups + 1 : groups);
}
// Parameters of n rows of width w into shared memory with row stride ld.
template <typename acc_t>
__device__ __forceinline__ void stage_rows(acc_t* dst, const acc_t* src, int n, int w, int ld) {
  for (int e = threadIdx.x; e < n * w; e += blockDim.x) dst[(e / w) * ld + e % w] = __ldg(src + e);
}

// Vectors a thread of a tile fill has in flight before it stores any: 4 x 16 bytes x 256 threads = 16 KiB per CTA.
constexpr int kFillBatch = 4;

// Loads rows [row0, row0 + rows) of x (width r) into a shared tile of row stride ldd as accumulators: vectors when
// vec_rows allows (kFillBatch loads issued before their stores), else one element per trip.
template <typename T, typename acc_t>
__device__ __forceinline__ void load_tile(acc_t* dst, int ldd, const T* x, int64_t row0, int rows, int r) {
  constexpr int V = vec_elems<T>();
  const T* src = x + row0 * r;
  if (vec_rows(src, r, dst, ldd)) {
    const int per_row = r / V, cnt = rows * per_row, step = int(blockDim.x);
    for (int v0 = threadIdx.x; v0 < cnt; v0 += kFillBatch * step) {
      Vec<T> raw[kFillBatch];
#pragma unroll
      for (int b = 0; b < kFillBatch; ++b)
        if (v0 + b * step < cnt) raw[b] = ld_vec(src + int64_t(v0 + b * step) * V);  // rows are contiguous in x
#pragma unroll
      for (int b = 0; b < kFillBatch; ++b) {
        const int v = v0 + b * step;
        if (v >= cnt) break;
        const int row = v / per_row, col = (v - row * per_row) * V;
        acc_t a[V];
        widen(a, raw[b]);
        st_packs(dst + row * ldd + col, a);
      }
    }
    return;
  }
  const int cnt = rows * r;
  for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
    const int row = e / r, col = e - row * r;
    dst[row * ldd + col] = ld<acc_t>(src + e);
  }
}

// Which rows a CTA owns: `per_entry` CTAs per steering group of `entry_rows` rows, CTA b taking rows
// [cta_rows * (b % per_entry), ...) of group b / per_entry (at most cta_rows: the forward's tile, the backward's
// chunk), and the group's coefficient.
template <typename acc_t>
struct Rows {
  int64_t entry_rows;
  unsigned per_entry;  // at most the grid size: the CTA -> group split is a 32-bit division (a 64-bit one is a call)
  int64_t cta_rows;
  const acc_t* coeffs;  // one per group, or nullptr: every group uses `coeff`
  acc_t coeff;
  const int64_t* adapters;  // a bank: one adapter index per group (else nullptr: adapter 0)
  int64_t n_adapters;
};
struct RowRange {
  int64_t entry, row0, row1;
};
template <typename acc_t>
__device__ __forceinline__ RowRange cta_rows(const Rows<acc_t>& m) {
  const unsigned b = blockIdx.x;
  const int64_t e = b / m.per_entry, start = e * m.entry_rows, end = start + m.entry_rows;
  const int64_t row0 = start + int64_t(b % m.per_entry) * m.cta_rows;
  return RowRange{e, row0, row0 + m.cta_rows < end ? row0 + m.cta_rows : end};
}
template <typename acc_t>
__device__ __forceinline__ acc_t entry_coeff(const Rows<acc_t>& m, int64_t e) {
  return m.coeffs ? __ldg(m.coeffs + e) : m.coeff;
}
// Adapter index of group e (0 without a bank), clamped to the bank.
__device__ __forceinline__ int64_t clamp_adapter(const int64_t* adapters, int64_t n_adapters, int64_t e) {
  return adapters ? clamp_adapter_index(__ldg(adapters + e), n_adapters) : 0;
}
template <typename acc_t>
__device__ __forceinline__ int64_t entry_adapter(const Rows<acc_t>& m, int64_t e) {
  return clamp_adapter(m.adapters, m.n_adapters, e);
}
// Host side: the Rows of call c with cta_rows rows per CTA, and its grid.
template <typename acc_t>
inline Rows<acc_t> rows_of(const CoreCall& c, int64_t cta_rows) {
  const int64_t entry_rows = core_entry_rows(c.n, c.core);
  return Rows<acc_t>{entry_rows, unsigned(entry_rows > 0 ? (entry_rows + cta_rows - 1) / cta_rows : 0), cta_rows,
                     static_cast<const acc_t*>(c.core.coeffs), acc_t(c.core.coeff), c.core.adapters,
                     c.core.n_adapters};
}
template <typename acc_t>
inline dim3 grid_of(const CoreCall& c, const Rows<acc_t>& m) {
  return dim3(unsigned(c.core.entries * m.per_entry));
}

// ------------------------------------------------------------------------------------ diag (gain)

// rows_per_cta rows per CTA, elementwise (vectors when vec_rows allows); s in shared memory.
template <typename T>
__global__ void __launch_bounds__(kCoreThreads)
    diag_forward_kernel(const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r,
                        const typename acc_of<T>::type* __restrict__ S,
                        const typename acc_of<T>::type* __restrict__ x, bool suppress_only, int mode,
                        T* __restrict__ h) {
  using acc_t = typename acc_of<T>::type;
  acc_t* s = dyn_smem<acc_t>();
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  x += ad * r;
  for (int j = threadIdx.x; j < r; j += blockDim.x) s[j] = diag_scale(mode, __ldg(S + j), __ldg(x + j), coeff, suppress_only);
  __syncthreads();
  const int64_t base = t.row0 * r, cnt = (t.row1 - t.row0) * r;
  constexpr int V = vec_elems<T>();
  if (vec_rows(p + base, r, s, 0) && aligned16(h + base)) {
    for (int64_t v = threadIdx.x; v < cnt / V; v += blockDim.x) {
      const int64_t e = base + v * V;
      acc_t a[V], sv[V];
      widen(a, ld_vec(p + e));
      ld_packs(sv, s + int(v * V % r));
#pragma unroll
      for (int q = 0; q < V; ++q) a[q] = a[q] * sv[q];
      st_vec(h + e, a);
    }
    return;
  }
  for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x) st(h + base + e, ld<acc_t>(p + base + e) * s[e % r]);
}

// Rows of dh and p a thread of the vector backward has in flight: 8 x 2 x 16 bytes.
constexpr int kDiagBatch = 8;

// Where column j lives in the elementwise backward's shared arrays: j with its low 3 bits xor-ed by bits 5..7, so that
// both a warp's 32 consecutive columns and the threads' runs of V consecutive columns (lane L at 8L + q) fall on
// distinct banks. Stays inside j's aligned group of 8: the arrays take r rounded up to 8.
__host__ __device__ inline int diag_swz(int j) { return j ^ ((j >> 5) & 7); }
__host__ __device__ inline int diag_smem_elems(int r) { return (r + 7) / 8 * 8; }

// The CTA's row chunk: dp = dh * s_j, partial ds_j = sum dh * p in row order for every column j. vec (r a multiple of
// the vector width, dh / p / dp 16-byte aligned): a thread per vector of columns, kDiagBatch rows of 16-byte loads
// in flight, s and the partials through shared memory (consecutive columns per warp access in global memory); else a
// thread per column.
template <typename T>
__global__ void __launch_bounds__(kCoreThreads)
    diag_backward_kernel(const T* __restrict__ dh, const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r,
                         const typename acc_of<T>::type* __restrict__ S,
                         const typename acc_of<T>::type* __restrict__ x, bool suppress_only, int mode, bool vec,
                         T* __restrict__ dp, typename acc_of<T>::type* __restrict__ ws) {
  using acc_t = typename acc_of<T>::type;
  constexpr int V = vec_elems<T>();
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  x += ad * r;
  acc_t* part = ws + int64_t(blockIdx.x) * core_slice(r);
  if (vec) {
    acc_t* ss = dyn_smem<acc_t>();            // s_j at diag_swz(j)
    acc_t* sp = ss + diag_smem_elems(r);      // the partials at diag_swz(j)
    for (int j = threadIdx.x; j < r; j += blockDim.x)
      ss[diag_swz(j)] = diag_scale(mode, __ldg(S + j), __ldg(x + j), coeff, suppress_only);
    __syncthreads();
    for (int j0 = threadIdx.x * V; j0 < r; j0 += blockDim.x * V) {
      acc_t sj[V], acc[V];
#pragma unroll
      for (int q = 0; q < V; ++q) {
        sj[q] = ss[diag_swz(j0 + q)];
        acc[q] = 0;
      }
      for (int64_t i0 = t.row0; i0 < t.row1; i0 += kDiagBatch) {
        Vec<T> d[kDiagBatch], pv[kDiagBatch];
#pragma unroll
        for (int b = 0; b < kDiagBatch; ++b)
          if (i0 + b < t.row1) {
            d[b] = ld_vec(dh + (i0 + b) * r + j0);
            pv[b] = ld_vec(p + (i0 + b) * r + j0);
          }
#pragma unroll
        for (int b = 0; b < kDiagBatch; ++b) {
          if (i0 + b >= t.row1) break;
          acc_t dd[V], pp[V], o[V];
          widen(dd, d[b]);
          widen(pp, pv[b]);
#pragma unroll
          for (int q = 0; q < V; ++q) {
            o[q] = dd[q] * sj[q];
            acc[q] += dd[q] * pp[q];
          }
          st_vec(dp + (i0 + b) * r + j0, o);
        }
      }
#pragma unroll
      for (int q = 0; q < V; ++q) sp[diag_swz(j0 + q)] = acc[q];
    }
    __syncthreads();
    for (int j = threadIdx.x; j < r; j += blockDim.x) part[j] = sp[diag_swz(j)];
    return;
  }
  for (int j = threadIdx.x; j < r; j += blockDim.x) {
    const acc_t sj = diag_scale(mode, __ldg(S + j), __ldg(x + j), coeff, suppress_only);
    acc_t acc = 0;
    for (int64_t i = t.row0; i < t.row1; ++i) {
      const int64_t e = i * r + j;
      const acc_t d = ld<acc_t>(dh + e);
      st(dp + e, d * sj);
      acc += d * ld<acc_t>(p + e);
    }
    part[j] = acc;
  }
}

// The elementwise cores: gain (mode kScaleGain) and rot without a rotated side (kScaleAdditive).
struct DiagLaunch {
  static TilePlan tile(const CoreParams& k, size_t acc_bytes) {
    return plan_tile("core", k.r, k.r, 0, 0, acc_bytes, 1);  // s (r) in shared memory
  }
  template <typename T>
  static void forward(const CoreCall& c, const TilePlan& pl, int mode, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    const auto m = rows_of<acc_t>(c, std::max<int64_t>(1, kDiagElemsPerCta / k.r));
    AX_LAUNCH((diag_forward_kernel<T>), grid_of(c, m), dim3(kCoreThreads), pl.smem, st, static_cast<const T*>(c.p), m,
              int(k.r), static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g), k.suppress_only, mode,
              static_cast<T*>(c.h));
    AX_CHECK_LAUNCH();
  }
  template <typename T>
  static void backward(const CoreCall& c, int64_t chunk, int mode, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    constexpr int V = vec_elems<T>();
    const bool vec = k.r % V == 0 && ((reinterpret_cast<uintptr_t>(c.grad_h) | reinterpret_cast<uintptr_t>(c.p) |
                                       reinterpret_cast<uintptr_t>(c.dp)) & 15) == 0;
    const int64_t cols = vec ? k.r / V : k.r;  // a thread per vector of columns, or per column
    const int threads = int(std::min<int64_t>(kCoreThreads, (cols + 31) / 32 * 32));
    const auto m = rows_of<acc_t>(c, chunk);
    const size_t smem = vec ? size_t(2 * diag_smem_elems(int(k.r))) * sizeof(acc_t) : 0;  // s and the partials
    AX_LAUNCH((diag_backward_kernel<T>), grid_of(c, m), dim3(threads), smem, st, static_cast<const T*>(c.grad_h),
              static_cast<const T*>(c.p), m, int(k.r), static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g),
              k.suppress_only, mode, vec, static_cast<T*>(c.dp), static_cast<acc_t*>(c.workspace));
    AX_CHECK_LAUNCH();
  }
};

template <>
struct CoreLaunch<Core::gain> {
  static constexpr int final_mode = kFinalGain;
  static TilePlan tile(const CoreParams& k, bool, size_t acc_bytes, int64_t) { return DiagLaunch::tile(k, acc_bytes); }
  template <typename T>
  static void forward(const CoreCall& c, const TilePlan& pl, ax::stream_t st) {
    DiagLaunch::forward<T>(c, pl, kScaleGain, st);
  }
  template <typename T>
  static void backward(const CoreCall& c, const TilePlan&, int64_t chunk, ax::stream_t st) {
    DiagLaunch::backward<T>(c, chunk, kScaleGain, st);
  }
};

// --------------------------------------------------------------------------------------------- rot

// Shared: s (r) | R (r rows, stride odd_ld(bs), when staged) | P (rows_per_tile * r).
template <typename T>
__global__ void __launch_bounds__(kCoreThreads)
    rot_forward_kernel(const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r, int bs, int side,
                       bool stage_params, const typename acc_of<T>::type* __restrict__ S,
                       const typename acc_of<T>::type* __restrict__ delta_s,
                       const typename acc_of<T>::type* __restrict__ R, int64_t R_stride, T* __restrict__ h) {
  using acc_t = typename acc_of<T>::type;
  const int ld = stage_params ? odd_ld(bs) : bs;  // R's row stride where it is read
  acc_t* s = dyn_smem<acc_t>();
  acc_t* Rs = s + r;
  acc_t* P = Rs + (stage_params ? int64_t(r) * ld : 0);
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  delta_s += ad * r;
  R += t.entry * R_stride;
  const acc_t* Rsrc = stage_params ? Rs : R;
  const int64_t row0 = t.row0;
  const int rows = int(t.row1 - t.row0);
  for (int j = threadIdx.x; j < r; j += blockDim.x) s[j] = __ldg(S + j) + coeff * __ldg(delta_s + j);
  if (stage_params) stage_rows(Rs, R, r, bs, ld);
  load_tile(P, r, p, row0, rows, r);
  __syncthreads();
  const int cnt = rows * r;
  for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
    const int row = e / r, col = e % r, i = col % bs, b0 = col - i;
    const acc_t* Rb = Rsrc + int64_t(b0) * ld;  // block b0 / bs: its bs rows from row b0
    const acc_t* pb = P + row * r + b0;
    acc_t acc = 0;
    if (side == kRotV) {
      for (int j = 0; j < bs; ++j) acc += Rb[i * ld + j] * pb[j];
      acc = acc * s[col];
    } else {
      for (int j = 0; j < bs; ++j) acc += pb[j] * s[b0 + j] * Rb[j * ld + i];
    }
    st(h + row0 * r + e, acc);
  }
}

// Shared: s (r) | R (as in the forward, when staged) | P | D | X (rows_per_tile * r each); X holds the rotated p
// (V side) or dh R^T (U side) of each element, for the ds partials.
// Workspace slice per CTA: ds (r) | dR (r*bs).
// minBlocks 2: with none ptxas caps this kernel at 40 registers on sm_90 (48 on sm_80) and spills, with 3 (85 registers)
// it spills on sm_90.
template <typename T>
__global__ void __launch_bounds__(kCoreThreads, 2)
    rot_backward_kernel(const T* __restrict__ dh, const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r,
                        int bs, int side, int rows_per_tile, bool stage_params,
                        const typename acc_of<T>::type* __restrict__ S,
                        const typename acc_of<T>::type* __restrict__ delta_s,
                        const typename acc_of<T>::type* __restrict__ R, int64_t R_stride, T* __restrict__ dp,
                        typename acc_of<T>::type* __restrict__ ws) {
  using acc_t = typename acc_of<T>::type;
  const int64_t n_rot = int64_t(r) * bs, n_part = r + n_rot;
  const int ld = stage_params ? odd_ld(bs) : bs;  // R's row stride where it is read
  acc_t* s = dyn_smem<acc_t>();
  acc_t* Rs = s + r;
  acc_t* P = Rs + (stage_params ? int64_t(r) * ld : 0);
  acc_t* D = P + rows_per_tile * r;
  acc_t* X = D + rows_per_tile * r;
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  delta_s += ad * r;
  R += t.entry * R_stride;
  const acc_t* Rsrc = stage_params ? Rs : R;
  const int64_t c0 = t.row0, c1 = t.row1;
  acc_t* part = ws + int64_t(blockIdx.x) * core_slice(n_part);
  for (int j = threadIdx.x; j < r; j += blockDim.x) s[j] = __ldg(S + j) + coeff * __ldg(delta_s + j);
  if (stage_params) stage_rows(Rs, R, r, bs, ld);
  const int bb = bs * bs;
  for (int64_t row0 = c0; row0 < c1; row0 += rows_per_tile) {
    const int rows = int(c1 - row0 < rows_per_tile ? c1 - row0 : rows_per_tile);
    load_tile(P, r, p, row0, rows, r);
    load_tile(D, r, dh, row0, rows, r);
    __syncthreads();
    const int cnt = rows * r;
    for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
      const int row = e / r, col = e % r, i = col % bs, b0 = col - i;
      const acc_t* Rb = Rsrc + int64_t(b0) * ld;
      const acc_t* pb = P + row * r + b0;
      const acc_t* db = D + row * r + b0;
      acc_t g = 0, q = 0;
      if (side == kRotV) {
        // dp_i = sum_k R_ki dh_k s_k;  q_i = sum_j R_ij p_j (rotated p)
        for (int k = 0; k < bs; ++k) g += Rb[k * ld + i] * db[k] * s[b0 + k];
        for (int j = 0; j < bs; ++j) q += Rb[i * ld + j] * pb[j];
        X[e] = q;
      } else {
        // a_i = sum_j R_ij dh_j;  dp_i = a_i s_i
        for (int j = 0; j < bs; ++j) q += Rb[i * ld + j] * db[j];
        X[e] = q;
        g = q * s[col];
      }
      st(dp + row0 * r + e, g);
    }
    __syncthreads();
    const bool first = row0 == c0;
    for (int64_t o = threadIdx.x; o < n_part; o += blockDim.x) {
      acc_t acc = first ? acc_t(0) : part[o];
      if (o < r) {
        const int j = int(o);
        if (side == kRotV)
          for (int row = 0; row < rows; ++row) acc += D[row * r + j] * X[row * r + j];
        else
          for (int row = 0; row < rows; ++row) acc += X[row * r + j] * P[row * r + j];
      } else {
        const int e = int(o - r), b0 = (e / bb) * bs, i = (e / bs) % bs, j = e % bs;
        if (side == kRotV)  // dR_ij += (dh_i s_i) p_j
          for (int row = 0; row < rows; ++row) acc += D[row * r + b0 + i] * s[b0 + i] * P[row * r + b0 + j];
        else  // dR_ij += (p_i s_i) dh_j
          for (int row = 0; row < rows; ++row) acc += P[row * r + b0 + i] * s[b0 + i] * D[row * r + b0 + j];
      }
      part[o] = acc;
    }
    __syncthreads();
  }
}

template <>
struct CoreLaunch<Core::rot> {
  static constexpr int final_mode = kFinalCoeff;
  static int64_t R_stride(const CoreParams& k) { return rot_per_entry(k) ? k.r * k.bs : 0; }
  static TilePlan tile(const CoreParams& k, bool backward, size_t acc_bytes, int64_t max_rows) {
    if (k.side != kRotNone && k.side != kRotV && k.side != kRotU)
      throw std::invalid_argument("antipasto_ext rot core: side must be 0, 1 or 2, got " + std::to_string(k.side));
    if (k.side == kRotNone) return DiagLaunch::tile(k, acc_bytes);
    if (k.bs < 1 || k.r % k.bs != 0)
      throw std::invalid_argument("antipasto_ext rot core: block size " + std::to_string(k.bs) +
                                  " does not divide r = " + std::to_string(k.r));
    return plan_tile("rot core", k.r, k.r, k.r * odd_ld(int(k.bs)), backward ? 3 * k.r : k.r, acc_bytes,
                     max_rows);
  }
  template <typename T>
  static void forward(const CoreCall& c, const TilePlan& pl, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    if (k.side == kRotNone) return DiagLaunch::forward<T>(c, pl, kScaleAdditive, st);
    const auto m = rows_of<acc_t>(c, pl.rows);
    AX_LAUNCH((rot_forward_kernel<T>), grid_of(c, m), dim3(kCoreThreads), pl.smem, st, static_cast<const T*>(c.p), m,
              int(k.r), int(k.bs), k.side, pl.stage, static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g),
              static_cast<const acc_t*>(k.R), R_stride(k), static_cast<T*>(c.h));
    AX_CHECK_LAUNCH();
  }
  template <typename T>
  static void backward(const CoreCall& c, const TilePlan& pl, int64_t chunk, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    if (k.side == kRotNone) return DiagLaunch::backward<T>(c, chunk, kScaleAdditive, st);
    const auto m = rows_of<acc_t>(c, chunk);
    AX_LAUNCH((rot_backward_kernel<T>), grid_of(c, m), dim3(kCoreThreads), pl.smem, st,
              static_cast<const T*>(c.grad_h), static_cast<const T*>(c.p), m, int(k.r), int(k.bs), k.side, pl.rows,
              pl.stage, static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g), static_cast<const acc_t*>(k.R),
              R_stride(k), static_cast<T*>(c.dp), static_cast<acc_t*>(c.workspace));
    AX_CHECK_LAUNCH();
  }
};

// -------------------------------------------------------------------------------------------- dplr

// Shared: s (r) | A (k rows, stride tile_ld(r)) | B (r rows, stride odd_ld(k)) (when staged) | P (tile rows, stride
// tile_ld(r)) | Tt (tile * k).
template <typename T>
__global__ void __launch_bounds__(kCoreThreads)
    dplr_forward_kernel(const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r, int k, int rows_per_tile,
                        bool stage_params, const typename acc_of<T>::type* __restrict__ S,
                        const typename acc_of<T>::type* __restrict__ g, const typename acc_of<T>::type* __restrict__ A,
                        const typename acc_of<T>::type* __restrict__ B, bool suppress_only, T* __restrict__ h) {
  using acc_t = typename acc_of<T>::type;
  const int ldp = tile_ld(r), lda = stage_params ? ldp : r, ldb = stage_params ? odd_ld(k) : k;
  acc_t* s = dyn_smem<acc_t>();
  acc_t* As = s + r;
  acc_t* Bs = As + (stage_params ? int64_t(k) * lda : 0);
  acc_t* P = Bs + (stage_params ? int64_t(r) * ldb : 0);
  acc_t* Tt = P + rows_per_tile * ldp;
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  g += ad * r;
  A += ad * k * r;
  B += ad * r * k;
  const acc_t* Asrc = stage_params ? As : A;
  const acc_t* Bsrc = stage_params ? Bs : B;
  const int64_t row0 = t.row0;
  const int rows = int(t.row1 - t.row0);
  for (int j = threadIdx.x; j < r; j += blockDim.x)
    s[j] = diag_scale(kScaleGain, __ldg(S + j), __ldg(g + j), coeff, suppress_only);
  if (stage_params) {
    stage_rows(As, A, k, r, lda);
    stage_rows(Bs, B, r, k, ldb);
  }
  load_tile(P, ldp, p, row0, rows, r);
  __syncthreads();
  for (int e = threadIdx.x; e < rows * k; e += blockDim.x) {  // t = p A^T
    const int row = e / k, m = e % k;
    const acc_t* pr = P + row * ldp;
    const acc_t* Am = Asrc + int64_t(m) * lda;
    acc_t acc = 0;
    for (int j = 0; j < r; ++j) acc += pr[j] * Am[j];
    Tt[e] = acc;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * r; e += blockDim.x) {  // h = p s + coeff t B^T
    const int row = e / r, j = e % r;
    const acc_t* tr = Tt + row * k;
    const acc_t* Bj = Bsrc + int64_t(j) * ldb;
    acc_t acc = 0;
    for (int m = 0; m < k; ++m) acc += tr[m] * Bj[m];
    st(h + row0 * r + e, P[row * ldp + j] * s[j] + coeff * acc);
  }
}

// Shared: s (r) | A | B (as in the forward, when staged) | P | D (tile rows, stride tile_ld(r)) | Tt | Uu (tile * k each).
// Workspace slice per CTA: ds (r) | dA (k*r) | dB (r*k).
// minBlocks 1: without it ptxas caps this kernel at 64 registers on sm_80 and spills.
template <typename T>
__global__ void __launch_bounds__(kCoreThreads, 1)
    dplr_backward_kernel(const T* __restrict__ dh, const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r,
                         int k, int rows_per_tile, bool stage_params, const typename acc_of<T>::type* __restrict__ S,
                         const typename acc_of<T>::type* __restrict__ g, const typename acc_of<T>::type* __restrict__ A,
                         const typename acc_of<T>::type* __restrict__ B, bool suppress_only, T* __restrict__ dp,
                         typename acc_of<T>::type* __restrict__ ws) {
  using acc_t = typename acc_of<T>::type;
  const int64_t kr = int64_t(k) * r, n_part = r + 2 * kr;
  const int ldp = tile_ld(r), lda = stage_params ? ldp : r, ldb = stage_params ? odd_ld(k) : k;
  acc_t* s = dyn_smem<acc_t>();
  acc_t* As = s + r;
  acc_t* Bs = As + (stage_params ? int64_t(k) * lda : 0);
  acc_t* P = Bs + (stage_params ? int64_t(r) * ldb : 0);
  acc_t* D = P + rows_per_tile * ldp;
  acc_t* Tt = D + rows_per_tile * ldp;
  acc_t* Uu = Tt + rows_per_tile * k;
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  g += ad * r;
  A += ad * k * r;
  B += ad * r * k;
  const acc_t* Asrc = stage_params ? As : A;
  const acc_t* Bsrc = stage_params ? Bs : B;
  const int64_t c0 = t.row0, c1 = t.row1;
  acc_t* part = ws + int64_t(blockIdx.x) * core_slice(n_part);
  for (int j = threadIdx.x; j < r; j += blockDim.x)
    s[j] = diag_scale(kScaleGain, __ldg(S + j), __ldg(g + j), coeff, suppress_only);
  if (stage_params) {
    stage_rows(As, A, k, r, lda);
    stage_rows(Bs, B, r, k, ldb);
  }
  for (int64_t row0 = c0; row0 < c1; row0 += rows_per_tile) {
    const int rows = int(c1 - row0 < rows_per_tile ? c1 - row0 : rows_per_tile);
    load_tile(P, ldp, p, row0, rows, r);
    load_tile(D, ldp, dh, row0, rows, r);
    __syncthreads();
    for (int e = threadIdx.x; e < rows * k; e += blockDim.x) {  // t = p A^T, u = coeff dh B
      const int row = e / k, m = e % k;
      const acc_t* pr = P + row * ldp;
      const acc_t* dr = D + row * ldp;
      const acc_t* Am = Asrc + int64_t(m) * lda;
      acc_t at = 0, au = 0;
      for (int j = 0; j < r; ++j) {
        at += pr[j] * Am[j];
        au += dr[j] * Bsrc[int64_t(j) * ldb + m];
      }
      Tt[e] = at;
      Uu[e] = coeff * au;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < rows * r; e += blockDim.x) {  // dp = dh s + u A
      const int row = e / r, j = e % r;
      const acc_t* ur = Uu + row * k;
      acc_t acc = 0;
      for (int m = 0; m < k; ++m) acc += ur[m] * Asrc[int64_t(m) * lda + j];
      st(dp + row0 * r + e, D[row * ldp + j] * s[j] + acc);
    }
    const bool first = row0 == c0;
    for (int64_t o = threadIdx.x; o < n_part; o += blockDim.x) {
      acc_t acc = first ? acc_t(0) : part[o];
      if (o < r) {  // ds_j += dh_j p_j
        const int j = int(o);
        for (int row = 0; row < rows; ++row) acc += D[row * ldp + j] * P[row * ldp + j];
      } else if (o < r + kr) {  // dA_mj += u_m p_j
        const int e = int(o - r), m = e / r, j = e % r;
        for (int row = 0; row < rows; ++row) acc += Uu[row * k + m] * P[row * ldp + j];
      } else {  // dB_jm += coeff dh_j t_m
        const int e = int(o - r - kr), j = e / k, m = e % k;
        for (int row = 0; row < rows; ++row) acc += coeff * D[row * ldp + j] * Tt[row * k + m];
      }
      part[o] = acc;
    }
    __syncthreads();
  }
}

template <>
struct CoreLaunch<Core::dplr> {
  static constexpr int final_mode = kFinalGain;
  static TilePlan tile(const CoreParams& k, bool backward, size_t acc_bytes, int64_t max_rows) {
    const int64_t ldp = tile_ld(int(k.r));
    return plan_tile("dplr core", k.r, k.r, k.k * ldp + k.r * odd_ld(int(k.k)), backward ? 2 * ldp + 2 * k.k : ldp + k.k,
                     acc_bytes, max_rows);
  }
  template <typename T>
  static void forward(const CoreCall& c, const TilePlan& pl, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    const auto m = rows_of<acc_t>(c, pl.rows);
    AX_LAUNCH((dplr_forward_kernel<T>), grid_of(c, m), dim3(kCoreThreads), pl.smem, st, static_cast<const T*>(c.p), m,
              int(k.r), int(k.k), pl.rows, pl.stage, static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g),
              static_cast<const acc_t*>(k.A), static_cast<const acc_t*>(k.B), k.suppress_only, static_cast<T*>(c.h));
    AX_CHECK_LAUNCH();
  }
  template <typename T>
  static void backward(const CoreCall& c, const TilePlan& pl, int64_t chunk, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    const auto m = rows_of<acc_t>(c, chunk);
    AX_LAUNCH((dplr_backward_kernel<T>), grid_of(c, m), dim3(kCoreThreads), pl.smem, st,
              static_cast<const T*>(c.grad_h), static_cast<const T*>(c.p), m, int(k.r), int(k.k), pl.rows, pl.stage,
              static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g), static_cast<const acc_t*>(k.A),
              static_cast<const acc_t*>(k.B), k.suppress_only, static_cast<T*>(c.dp), static_cast<acc_t*>(c.workspace));
    AX_CHECK_LAUNCH();
  }
};

// ------------------------------------------------------------------------------------------ ablate

// Threads per (row, low-rank index) item of ablate's length-r sums (v = p S C, dw = -dh C): a power of 2 that keeps
// the 256 threads busy on a 32-row tile (8 at k 1, 4 at k 2, 2 at k 3..4, else 1). Each sums every lanes-th term in
// order; the lanes then add their sums in an xor butterfly (tests/cpp/row_oracles.h's split_sum).
__host__ __device__ inline int ablate_lanes(int k) {
  const int fit = kCoreThreads / (kCoreMaxTileRows * (k > 0 ? k : 1));
  return fit >= 8 ? 8 : fit >= 4 ? 4 : fit >= 2 ? 2 : 1;
}
// Row stride of ablate's P and D tiles: ablate_lanes(k) consecutive columns per row in one instruction.
__host__ __device__ inline int ablate_ld(int r, int k) {
  const int lanes = ablate_lanes(k);
  return tile_ld(r, lanes > 4 ? lanes : 4);
}
template <typename acc_t>
__device__ __forceinline__ acc_t butterfly_sum(acc_t x, int lanes) {
  for (int off = lanes / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Shared: S (r) | C (r rows, stride odd_ld(k), when staged) | P (tile rows, stride ablate_ld(r, k)) | V (tile * k) |
// a (k).
template <typename T>
__global__ void __launch_bounds__(kCoreThreads)
    ablate_forward_kernel(const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r, int k, int rows_per_tile,
                          bool stage_params, const typename acc_of<T>::type* __restrict__ S,
                          const typename acc_of<T>::type* __restrict__ C, const typename acc_of<T>::type* __restrict__ a,
                          T* __restrict__ h) {
  using acc_t = typename acc_of<T>::type;
  const int ldp = ablate_ld(r, k), ldc = stage_params ? odd_ld(k) : k, lanes = ablate_lanes(k);
  acc_t* Ss = dyn_smem<acc_t>();
  acc_t* Cs = Ss + r;
  acc_t* P = Cs + (stage_params ? int64_t(r) * ldc : 0);
  acc_t* V = P + rows_per_tile * ldp;
  acc_t* as = V + rows_per_tile * k;
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  C += ad * r * k;
  a += ad * k;
  const acc_t* Csrc = stage_params ? Cs : C;
  const int64_t row0 = t.row0;
  const int rows = int(t.row1 - t.row0);
  stage(Ss, S, r);
  stage(as, a, k);
  if (stage_params) stage_rows(Cs, C, r, k, ldc);
  load_tile(P, ldp, p, row0, rows, r);
  __syncthreads();
  // v = coeff a (p S C): `lanes` threads per item e = (row, m); the trip count is warp-uniform for the butterfly
  const int items = rows * k;
  for (int u = threadIdx.x; u - int(threadIdx.x % 32) < items * lanes; u += blockDim.x) {
    const int e = u / lanes, l = u % lanes, row = e / k, m = e % k;
    acc_t acc = 0;
    if (e < items) {
      const acc_t* pr = P + row * ldp;
      for (int j = l; j < r; j += lanes) acc += pr[j] * Ss[j] * Csrc[int64_t(j) * ldc + m];
    }
    acc = butterfly_sum(acc, lanes);
    if (e < items && l == 0) V[e] = acc * (coeff * as[m]);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * r; e += blockDim.x) {  // h = p S - C v
    const int row = e / r, j = e % r;
    const acc_t* vr = V + row * k;
    const acc_t* Cj = Csrc + int64_t(j) * ldc;
    acc_t acc = 0;
    for (int m = 0; m < k; ++m) acc += Cj[m] * vr[m];
    st(h + row0 * r + e, P[row * ldp + j] * Ss[j] - acc);
  }
}

// Shared: S (r) | C (as in the forward, when staged) | P | D (tile rows, stride ablate_ld(r, k)) | V | W (tile * k
// each) | a (k): V = p S C, W = -dh C. Workspace slice per CTA: dC (r*k) | da (k).
template <typename T>
__global__ void __launch_bounds__(kCoreThreads)
    ablate_backward_kernel(const T* __restrict__ dh, const T* __restrict__ p, Rows<typename acc_of<T>::type> m, int r,
                           int k, int rows_per_tile, bool stage_params, const typename acc_of<T>::type* __restrict__ S,
                           const typename acc_of<T>::type* __restrict__ C,
                           const typename acc_of<T>::type* __restrict__ a, T* __restrict__ dp,
                           typename acc_of<T>::type* __restrict__ ws) {
  using acc_t = typename acc_of<T>::type;
  const int64_t rk = int64_t(r) * k, n_part = rk + k;
  const int ldp = ablate_ld(r, k), ldc = stage_params ? odd_ld(k) : k, lanes = ablate_lanes(k);
  acc_t* Ss = dyn_smem<acc_t>();
  acc_t* Cs = Ss + r;
  acc_t* P = Cs + (stage_params ? int64_t(r) * ldc : 0);
  acc_t* D = P + rows_per_tile * ldp;
  acc_t* V = D + rows_per_tile * ldp;
  acc_t* W = V + rows_per_tile * k;
  acc_t* as = W + rows_per_tile * k;
  const RowRange t = cta_rows(m);
  const acc_t coeff = entry_coeff(m, t.entry);
  const int64_t ad = entry_adapter(m, t.entry);  // the group's adapter in a bank, else 0
  C += ad * r * k;
  a += ad * k;
  const acc_t* Csrc = stage_params ? Cs : C;
  const int64_t c0 = t.row0, c1 = t.row1;
  acc_t* part = ws + int64_t(blockIdx.x) * core_slice(n_part);
  stage(Ss, S, r);
  stage(as, a, k);
  if (stage_params) stage_rows(Cs, C, r, k, ldc);
  for (int64_t row0 = c0; row0 < c1; row0 += rows_per_tile) {
    const int rows = int(c1 - row0 < rows_per_tile ? c1 - row0 : rows_per_tile);
    load_tile(P, ldp, p, row0, rows, r);
    load_tile(D, ldp, dh, row0, rows, r);
    __syncthreads();
    const int items = rows * k;  // `lanes` threads per item, as in the forward
    for (int u = threadIdx.x; u - int(threadIdx.x % 32) < items * lanes; u += blockDim.x) {
      const int e = u / lanes, l = u % lanes, row = e / k, m = e % k;
      acc_t v = 0, dw = 0;
      if (e < items) {
        const acc_t* pr = P + row * ldp;
        const acc_t* dr = D + row * ldp;
        for (int j = l; j < r; j += lanes) {
          const acc_t cjm = Csrc[int64_t(j) * ldc + m];
          v += pr[j] * Ss[j] * cjm;
          dw -= dr[j] * cjm;
        }
      }
      v = butterfly_sum(v, lanes);
      dw = butterfly_sum(dw, lanes);
      if (e < items && l == 0) {
        V[e] = v;
        W[e] = dw;
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < rows * r; e += blockDim.x) {  // dp = (dh + C dv) S, dv = coeff a dw
      const int row = e / r, j = e % r;
      const acc_t* wr = W + row * k;
      const acc_t* Cj = Csrc + int64_t(j) * ldc;
      acc_t acc = 0;
      for (int m = 0; m < k; ++m) acc += Cj[m] * (coeff * as[m] * wr[m]);
      st(dp + row0 * r + e, (D[row * ldp + j] + acc) * Ss[j]);
    }
    const bool first = row0 == c0;
    for (int64_t o = threadIdx.x; o < n_part; o += blockDim.x) {
      acc_t acc = first ? acc_t(0) : part[o];
      if (o < rk) {  // dC_jm += (p S)_j dv_m - dh_j w_m,  w = coeff a v
        const int j = int(o / k), m = int(o % k);
        const acc_t ca = coeff * as[m];
        for (int row = 0; row < rows; ++row) {
          const acc_t h0 = P[row * ldp + j] * Ss[j];
          acc += h0 * (ca * W[row * k + m]) - D[row * ldp + j] * (V[row * k + m] * ca);
        }
      } else {  // da_m += coeff v_m dw_m
        const int m = int(o - rk);
        for (int row = 0; row < rows; ++row) acc += coeff * V[row * k + m] * W[row * k + m];
      }
      part[o] = acc;
    }
    __syncthreads();
  }
}

template <>
struct CoreLaunch<Core::ablate> {
  static constexpr int final_mode = kFinalNone;
  static TilePlan tile(const CoreParams& k, bool backward, size_t acc_bytes, int64_t max_rows) {
    const int64_t ldp = ablate_ld(int(k.r), int(k.k));
    return plan_tile("ablate core", k.r, k.r + k.k, k.r * odd_ld(int(k.k)), backward ? 2 * ldp + 2 * k.k : ldp + k.k,
                     acc_bytes, max_rows);
  }
  template <typename T>
  static void forward(const CoreCall& c, const TilePlan& pl, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    const auto m = rows_of<acc_t>(c, pl.rows);
    AX_LAUNCH((ablate_forward_kernel<T>), grid_of(c, m), dim3(kCoreThreads), pl.smem, st, static_cast<const T*>(c.p),
              m, int(k.r), int(k.k), pl.rows, pl.stage, static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.A),
              static_cast<const acc_t*>(k.a), static_cast<T*>(c.h));
    AX_CHECK_LAUNCH();
  }
  template <typename T>
  static void backward(const CoreCall& c, const TilePlan& pl, int64_t chunk, ax::stream_t st) {
    using acc_t = typename acc_of<T>::type;
    const CoreParams& k = c.core;
    const auto m = rows_of<acc_t>(c, chunk);
    AX_LAUNCH((ablate_backward_kernel<T>), grid_of(c, m), dim3(kCoreThreads), pl.smem, st,
              static_cast<const T*>(c.grad_h), static_cast<const T*>(c.p), m, int(k.r), int(k.k), pl.rows, pl.stage,
              static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.A), static_cast<const acc_t*>(k.a),
              static_cast<T*>(c.dp), static_cast<acc_t*>(c.workspace));
    AX_CHECK_LAUNCH();
  }
};

// ------------------------------------------------------------------------------------ second stage

// The second stage (api.h's reduction). Output o < n_adapters * n_shared (n_shared = n_part - n_entry_part: the
// first entries of a slice) is adapter o / n_shared's entry j = o % n_shared: the sum over the groups that run the
// adapter (every group without a bank), in group order, of (the group's CTA slices summed in CTA order) times the
// chain-rule factor of entries j < r at the group's coefficient: d s_eff / d g (kFinalGain) or coeff
// (kFinalCoeff). Then each group's per-group entries, its slices' sum.
template <typename acc_t>
__global__ void __launch_bounds__(kCoreThreads)
    reduce_partials_kernel(const acc_t* __restrict__ ws, int64_t entries, int64_t per_entry, int64_t n_part,
                           int64_t n_entry_part, int mode, int r, const acc_t* __restrict__ S,
                           const acc_t* __restrict__ g, const acc_t* __restrict__ coeffs, acc_t coeff,
                           const int64_t* __restrict__ adapters, int64_t n_adapters, bool suppress_only,
                           acc_t* __restrict__ out) {
  const int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, n_shared = n_part - n_entry_part;
  const int64_t slice = core_slice(n_part);  // a CTA's slice of the workspace
  if (o >= n_adapters * n_shared + entries * n_entry_part) return;
  if (o >= n_adapters * n_shared) {
    const int64_t q = o - n_adapters * n_shared, e = q / n_entry_part, j = n_shared + q % n_entry_part;
    acc_t tot = 0;
    for (int64_t c = e * per_entry; c < (e + 1) * per_entry; ++c) tot += ws[c * slice + j];
    out[o] = tot;
    return;
  }
  const int64_t ad = o / n_shared, j = o % n_shared;
  acc_t tot = 0;
  bool first = true;
  for (int64_t e = 0; e < entries; ++e) {
    if (clamp_adapter(adapters, n_adapters, e) != ad) continue;
    acc_t sum = 0;
    for (int64_t c = e * per_entry; c < (e + 1) * per_entry; ++c) sum += ws[c * slice + j];
    const acc_t ce = coeffs ? __ldg(coeffs + e) : coeff;
    if (j < r) {
      if (mode == kFinalGain) {
        acc_t dscale = 0;
        gain_scale<acc_t>(__ldg(S + j), __ldg(g + ad * r + j), ce, suppress_only, &dscale);
        sum *= dscale;
      } else if (mode == kFinalCoeff) {
        sum *= ce;
      }
    }
    tot = first ? sum : tot + sum;  // the first group's value as it is (0 + -0 would be +0)
    first = false;
  }
  out[o] = tot;
}

}  // namespace kern
}  // namespace AX_KERNEL_NS
}  // namespace ax
