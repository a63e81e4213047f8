// The S-space projection fused with the core, h = core(x Vh^T), for 16-bit activations.
//
//   x (n, d_in) and Vh (r, d_in) in bf16 / f16, row-major, d_in % 8 == 0, 16-byte aligned rows;
//   P = x Vh^T accumulated in fp32 on the tensor cores (ax::mma_m16n8k16_{bf16,f16}), never rounded
//   to 16 bits before the core (unlike the unfused F.linear + core path); h = core(P) in x's dtype,
//   and optionally P itself (rounded to x's dtype) for the backward.
//   Cores (ProjCoreArgs): gain (antipasto / corda, s = S (1 + ELU(coeff g'))), rot (none / V / U sides,
//   s = S + coeff delta_s, R (r/bs, bs, bs) read from global memory), and the two low-rank cores as
//   one epilogue h = P s + ((P u) L d) M^T (k <= 32):
//     dplr    s = gain scale, u = 1, L = A^T, d = coeff,      M = B
//     ablate  s = S,          u = S, L = C,   d = -coeff a,   M = C
//
// Prefill kernel: one CTA (4 warps, 128 threads) per tile of 32 rows spanning all r columns (r <= 256,
// padded to the warp's n-tiles); warp w owns the 16-row m-tile (w & 1) and every other 8-column
// n-tile (w >> 1, +2, ...). K runs in steps of 16 through two shared-memory stages filled with
// cp.async (16-byte copies, zero-filled outside x / Vh): the copy of step k+1 overlaps the mma of
// step k. Epilogue: the fp32 P tile goes to shared memory and the core is applied there.
//
// Steering (coeffs: groups of group_rows consecutive rows, each at its coefficient, with its rotation set and, in a
// bank, its adapter's parameters): the epilogue computes s and d per row instead of staging them once per CTA.
//
// Decode (n <= 16 rows, long d_in): split-K. Grid (1, splits): CTA s computes the partial P of its K
// range and writes it to a workspace; project_finish_kernel adds the splits in a fixed order
// (deterministic, no atomics) and applies the core.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "csrc/kernels/cores.cuh"
#include "csrc/kernels/kernel_ns.h"
#include "emu/portability.cuh"

namespace ax {
namespace AX_KERNEL_NS {
namespace kern {

constexpr int kProjThreads = 128;
constexpr int kProjBM = 32;             // rows per CTA
constexpr int kProjBK = 16;             // K per stage (one mma k-step)
constexpr int kProjLd = kProjBK + 8;    // shared row stride in 16-bit elements: 48 bytes, conflict-free frags
constexpr int kProjMaxR = int(ax::kProjectMaxR);
enum ProjCore : int { kProjGain = int(Core::gain), kProjRot = int(Core::rot), kProjDplr = int(Core::dplr),
                      kProjAblate = int(Core::ablate) };

// The core of the fused projection as the kernels take it (by value); float parameters on the device.
struct ProjCoreArgs {
  int core, side, bs, k;
  const float *S, *g, *R;  // g: gain (gain, dplr) or delta_s (rot); R: rot sides V / U
  const float *A, *B;      // dplr A (k, r), B (r, k); ablate C (r, k) in both
  const float* a;          // ablate a (k)
  float coeff;
  bool suppress_only;
  const float* coeffs;      // steered: one coefficient per group of group_rows rows (else nullptr)
  int64_t group_rows;
  const int64_t* adapters;  // a bank: one adapter per group (else nullptr), of n_adapters
  int64_t n_adapters;
};

// The core of one row: its coefficient, parameters and rotation set (the call's own when not steered).
struct ProjRowCore {
  float coeff;
  const float *g, *R, *A, *B, *a;
};
__device__ __forceinline__ ProjRowCore proj_row_core(const ProjCoreArgs& c, int r, int64_t row) {
  if (!c.coeffs) return ProjRowCore{c.coeff, c.g, c.R, c.A, c.B, c.a};
  // rows < 2^31 (the launcher checks): a 32-bit division (a 64-bit one is a call)
  const int64_t e = unsigned(row) / unsigned(c.group_rows), ad = clamp_adapter(c.adapters, c.n_adapters, e);
  const int64_t rk = int64_t(r) * c.k;
  return ProjRowCore{__ldg(c.coeffs + e), c.g ? c.g + ad * r : c.g, c.R ? c.R + e * int64_t(r) * c.bs : c.R,
                     c.A ? c.A + ad * rk : c.A, c.B ? c.B + ad * rk : c.B, c.a ? c.a + ad * c.k : c.a};
}
// s_j of a row: gain scale (gain, dplr), S + coeff delta_s (rot) or S (ablate).
__device__ __forceinline__ float proj_scale(const ProjCoreArgs& c, const ProjRowCore& rc, int j) {
  return c.core == kProjAblate ? __ldg(c.S + j)
                               : diag_scale<float>(c.core == kProjRot ? kScaleAdditive : kScaleGain, __ldg(c.S + j),
                                                   __ldg(rc.g + j), rc.coeff, c.suppress_only);
}
// d_j of a row's low-rank epilogue: coeff (dplr), -coeff a_j (ablate).
__device__ __forceinline__ float proj_weight(const ProjCoreArgs& c, const ProjRowCore& rc, int j) {
  return c.core == kProjDplr ? rc.coeff : -rc.coeff * __ldg(rc.a + j);
}

__host__ __device__ inline bool proj_is_lowrank(int core) { return core == kProjDplr || core == kProjAblate; }

// Row stride of the fp32 P tile in shared memory: 8 (mod 32) floats, so that the C fragments' 8-byte stores (a
// half warp: 4 rows x 4 column pairs) fill the 32 banks once (a stride of 256 puts the 8 rows of a warp in one
// bank group: 8-way).
__host__ __device__ inline int proj_ld(int r) { return r + (8 - r % 32 + 32) % 32; }
// Shared memory of the epilogue in floats: P (32 rows, stride proj_ld(r)), s (r), d (k), Q (32 x k).
__host__ __device__ inline int proj_epilogue_floats(int r, int k) { return kProjBM * proj_ld(r) + r + k + kProjBM * k; }

template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                        const float c[4]) {
  ax::mma_m16n8k16_bf16(d, a, b, c);
}
template <>
__device__ __forceinline__ void mma16816<__half>(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
  ax::mma_m16n8k16_f16(d, a, b, c);
}

__device__ __forceinline__ uint32_t ld_u32(const void* p) { return *static_cast<const uint32_t*>(p); }
// Columns col, col + 1 of a row at dst, of which `left` are inside the row: one 8-byte store when both are and dst
// is 8-byte aligned (an odd row width leaves every other row of a workspace unaligned).
__device__ __forceinline__ void st_pair(float* dst, int left, float a, float b) {
  if (left >= 2 && (reinterpret_cast<uintptr_t>(dst) & 7) == 0) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
  } else {
    if (left >= 1) dst[0] = a;
    if (left >= 2) dst[1] = b;
  }
}

// s_j (and the low-rank weights d_j) into shared memory, for an unsteered call (a steered one computes them per
// row in the epilogue).
__device__ __forceinline__ void proj_scales(float* s, float* d, int r, const ProjCoreArgs& c) {
  if (c.coeffs) return;
  const ProjRowCore rc = proj_row_core(c, r, 0);
  for (int j = threadIdx.x; j < r; j += blockDim.x) s[j] = proj_scale(c, rc, j);
  if (proj_is_lowrank(c.core))
    for (int j = threadIdx.x; j < c.k; j += blockDim.x) d[j] = proj_weight(c, rc, j);
}

// h (and p) of `rows` rows from the fp32 P tile in shared memory, row stride proj_ld(r) (expressions of
// rot_forward_kernel).
// Low-rank cores first form Q = (P u) L d (rows x k) in shared memory: the caller's barrier after
// P and s, one here after Q. Every thread reaches it (the core is uniform over the grid).
template <typename T>
__device__ __forceinline__ void proj_epilogue(float* P, const float* s, const float* d, float* Q, int rows, int r,
                                              const ProjCoreArgs& c, int64_t row0, T* h, T* p_out) {
  const int k = c.k, ldp = proj_ld(r);
  const bool lowrank = proj_is_lowrank(c.core);
  const bool steered = c.coeffs != nullptr;
  if (lowrank) {
    for (int e = threadIdx.x; e < rows * k; e += blockDim.x) {
      const int row = e / k, j = e % k;
      const ProjRowCore rc = proj_row_core(c, r, row0 + row);
      const float* pr = P + row * ldp;
      float acc = 0.f;
      if (c.core == kProjDplr)
        for (int col = 0; col < r; ++col) acc += pr[col] * __ldg(rc.A + int64_t(j) * r + col);
      else  // ablate: s = S whatever the row
        for (int col = 0; col < r; ++col) acc += pr[col] * (steered ? __ldg(c.S + col) : s[col]) * __ldg(rc.A + int64_t(col) * k + j);
      Q[e] = acc * (steered ? proj_weight(c, rc, j) : d[j]);
    }
    __syncthreads();
  }
  const int cnt = rows * r;
  for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
    const int row = e / r, col = e % r;
    const ProjRowCore rc = proj_row_core(c, r, row0 + row);
    auto sc = [&](int j) { return steered ? proj_scale(c, rc, j) : s[j]; };
    const float pe = P[row * ldp + col];
    if (p_out) st(p_out + row0 * r + e, pe);
    float acc;
    if (c.core == kProjRot && c.side != kRotNone) {
      const int bs = c.bs, i = col % bs, b0 = col - i;
      const float* Rb = rc.R + int64_t(b0) * bs;
      const float* pb = P + row * ldp + b0;
      acc = 0.f;
      if (c.side == kRotV) {
        for (int j = 0; j < bs; ++j) acc += __ldg(Rb + i * bs + j) * pb[j];
        acc = acc * sc(col);
      } else {
        for (int j = 0; j < bs; ++j) acc += pb[j] * sc(b0 + j) * __ldg(Rb + j * bs + i);
      }
    } else {
      acc = pe * sc(col);
      if (lowrank) {
        const float* q = Q + row * k;
        const float* m = rc.B + int64_t(col) * k;
        for (int j = 0; j < k; ++j) acc += q[j] * __ldg(m + j);
      }
    }
    st(h + row0 * r + e, acc);
  }
}

// cp.async of K step `step` (16 columns from k_begin + 16 step) of the x tile (32 rows) and the Vh
// tile (RP rows) into stage step % 2; zero-filled outside x, Vh and the K range. Copy c moves half c / 8 % 2 of
// row c / 16 * 8 + c % 8: a quarter warp writes one half of 8 consecutive rows, 8 distinct bank groups at the
// 48-byte row stride (two lanes per row would put rows 0 and 3 in one), and a warp still reads both halves of its
// 16 rows (whole 32-byte sectors).
template <typename T, int RP>
__device__ __forceinline__ void proj_issue(T* stages, int step, const T* x, const T* Vh, int64_t n, int d_in, int r,
                                           int64_t row0, int k_begin, int k_end) {
  T* sxs = stages + (step & 1) * ((kProjBM + RP) * kProjLd);
  T* svs = sxs + kProjBM * kProjLd;
  const int k0 = k_begin + step * kProjBK;
  for (int c = threadIdx.x; c < (kProjBM + RP) * 2; c += kProjThreads) {
    const int row = c / 16 * 8 + c % 8, half = c / 8 % 2, kk = k0 + half * 8;
    const bool is_x = row < kProjBM;
    const int rr = is_x ? row : row - kProjBM;
    const bool valid = kk < k_end && (is_x ? row0 + rr < n : rr < r);
    const T* src = !valid ? x : is_x ? x + (row0 + rr) * d_in + kk : Vh + int64_t(rr) * d_in + kk;
    T* dst = (is_x ? sxs : svs) + rr * kProjLd + half * 8;
    ax::cp_async_16_zfill(dst, src, valid);
  }
}

// One CTA: rows [blockIdx.x * 32, +32) x all r columns, K range of split blockIdx.y.
// ws == nullptr: apply the core and write h (and p). Else: write the fp32 partial P to
// ws[(split * n + row) * r + col] (split-K decode; project_finish_kernel applies the core).
template <typename T, int NT>
__global__ void __launch_bounds__(kProjThreads, 1)
    project_core_kernel(const T* __restrict__ x, const T* __restrict__ Vh, int64_t n, int d_in, int r, int k_split,
                        ProjCoreArgs c, T* __restrict__ h, T* __restrict__ p_out, float* __restrict__ ws) {
  constexpr int RP = 16 * NT;  // padded rows of the Vh tile (two warps x NT n-tiles of 8)
  constexpr int kStage = (kProjBM + RP) * kProjLd;
  T* stages = dyn_smem<T>();
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
  const int mi = warp & 1, nh = warp >> 1;
  const int64_t row0 = int64_t(blockIdx.x) * kProjBM;
  const int rows = int(n - row0 < kProjBM ? n - row0 : kProjBM);
  const int k_begin = int(blockIdx.y) * k_split;
  const int k_end = k_begin + k_split < d_in ? k_begin + k_split : d_in;
  const int n_steps = (k_end - k_begin + kProjBK - 1) / kProjBK;

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  if (n_steps > 0) proj_issue<T, RP>(stages, 0, x, Vh, n, d_in, r, row0, k_begin, k_end);
  ax::cp_async_commit();
  for (int step = 0; step < n_steps; ++step) {
    if (step + 1 < n_steps) proj_issue<T, RP>(stages, step + 1, x, Vh, n, d_in, r, row0, k_begin, k_end);
    ax::cp_async_commit();
    ax::cp_async_wait<1>();
    __syncthreads();
    const T* sxs = stages + (step & 1) * kStage;
    const T* svs = sxs + kProjBM * kProjLd;
    const T* arow = sxs + (mi * 16 + g) * kProjLd + tq * 2;
    uint32_t a[4];
    a[0] = ld_u32(arow);
    a[1] = ld_u32(arow + 8 * kProjLd);
    a[2] = ld_u32(arow + 8);
    a[3] = ld_u32(arow + 8 * kProjLd + 8);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int nt = nh + 2 * j;
      if (nt * 8 < r) {  // warp-uniform
        const T* brow = svs + (nt * 8 + g) * kProjLd + tq * 2;
        uint32_t b[2];
        b[0] = ld_u32(brow);
        b[1] = ld_u32(brow + 8);
        mma16816<T>(acc[j], a, b, acc[j]);
      }
    }
    __syncthreads();
  }
  ax::cp_async_wait<0>();

  // C fragment: (row g | g+8, col nt*8 + tq*2 + {0,1}) of the warp's m-tile, stored as column pairs (8 bytes).
  if (ws != nullptr) {
    float* part = ws + (int64_t(blockIdx.y) * n + row0) * r;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2) {
        const int row = mi * 16 + g + 8 * h2, col = (nh + 2 * j) * 8 + tq * 2;
        if (row < rows) st_pair(part + row * r + col, r - col, acc[j][2 * h2], acc[j][2 * h2 + 1]);
      }
    return;
  }
  const int ldp = proj_ld(r);
  float* P = dyn_smem<float>();  // reuses the stage buffers (all reads of them are behind the last barrier)
  float *s = P + kProjBM * ldp, *d = s + r, *Q = d + c.k;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      const int row = mi * 16 + g + 8 * h2, col = (nh + 2 * j) * 8 + tq * 2;
      if (row < rows) st_pair(P + row * ldp + col, r - col, acc[j][2 * h2], acc[j][2 * h2 + 1]);
    }
  proj_scales(s, d, r, c);
  __syncthreads();
  proj_epilogue(P, s, d, Q, rows, r, c, row0, h, p_out);
}

// Split-K decode, second stage: P = sum over splits (in order) of the partials, then the core.
template <typename T>
__global__ void __launch_bounds__(kProjThreads, 1)  // minBlocks 1: else ptxas caps it at 32 registers on sm_80 and spills
    project_finish_kernel(const float* __restrict__ ws, int splits, int64_t n, int r, ProjCoreArgs c,
                          T* __restrict__ h, T* __restrict__ p_out) {
  const int ldp = proj_ld(r);
  float* P = dyn_smem<float>();
  float *s = P + kProjBM * ldp, *d = s + r, *Q = d + c.k;
  const int64_t row0 = int64_t(blockIdx.x) * kProjBM;
  const int rows = int(n - row0 < kProjBM ? n - row0 : kProjBM);
  for (int e = threadIdx.x; e < rows * r; e += blockDim.x) {
    float tot = 0.f;
    for (int k = 0; k < splits; ++k) tot += ws[(int64_t(k) * n + row0) * r + e];
    P[(e / r) * ldp + e % r] = tot;
  }
  proj_scales(s, d, r, c);
  __syncthreads();
  proj_epilogue(P, s, d, Q, rows, r, c, row0, h, p_out);
}

// ------------------------------------------------------------------------------------------ launch

template <typename T, int NT>
void launch_project_nt(const T* x, const T* Vh, int64_t n, int64_t d_in, int64_t r, const ProjCoreArgs& c, T* h,
                       T* p_out, float* ws, ax::stream_t st) {
  constexpr int RP = 16 * NT;
  const size_t stage_bytes = size_t(2) * (kProjBM + RP) * kProjLd * sizeof(T);
  const size_t epi_bytes = size_t(proj_epilogue_floats(int(r), c.k)) * sizeof(float);
  const size_t smem = stage_bytes > epi_bytes ? stage_bytes : epi_bytes;
  const int64_t k_split = ax::project_k_split(n, d_in);
  const unsigned splits = unsigned((d_in + k_split - 1) / k_split);
  const dim3 grid(blocks_for(n, kProjBM), splits);
  AX_LAUNCH((project_core_kernel<T, NT>), grid, dim3(kProjThreads), smem, st, x, Vh, n, int(d_in), int(r),
            int(k_split), c, h, p_out, splits > 1 ? ws : nullptr);
  AX_CHECK_LAUNCH();
  if (splits > 1) {
    AX_LAUNCH((project_finish_kernel<T>), dim3(blocks_for(n, kProjBM)), dim3(kProjThreads), epi_bytes, st, ws,
              int(splits), n, int(r), c, h, p_out);
    AX_CHECK_LAUNCH();
  }
}

}  // namespace kern
}  // namespace AX_KERNEL_NS
}  // namespace ax
