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
// Decode (n <= 16 rows; api.h project_decode_k): grid (K splits, 32-column slices of r), at least 132 CTAs where
// d_in allows. project_decode_kernel: 4 warps on one 16-row m-tile; the CTA's whole slice of x (n rows) and Vh
// (32 rows) goes into shared memory as one cp.async group (up to 28 KiB of Vh in flight per CTA: together every
// byte of Vh at once), warp w runs the K steps w, w + 4, ... on all four n-tiles, the four warps' fp32 tiles are
// summed in warp order and the partial P goes to the workspace. project_finish_kernel (a CTA per row) sums the
// partials in split order (deterministic, no atomics) and applies the core.
//
// Decode of the columnwise cores at n <= 4 rows where the decode model says it is faster (api.h project_gemv):
// project_gemv_kernel, a CTA per 2 columns of r over all of K; its threads load 16-byte chunks of the two Vh rows and
// of x straight into registers (a batch of chunks in flight: api.h gemv_batch), dot products in fp32 in chunk order,
// a butterfly sum per warp, the warps' sums added in warp order, then the core on the CTA's entries of P. One
// kernel, no workspace.
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
// Shared memory of the epilogue in floats: P (rows, stride proj_ld(r)), s (r), d (k), Q (rows x k).
__host__ __device__ inline int proj_epilogue_floats(int r, int k, int rows) {
  return rows * proj_ld(r) + r + k + rows * k;
}

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
// Rot's R (r rows of bs) and the low-rank M (r rows of k: dplr's B, ablate's C) where the caller staged them in
// shared memory (unsteered calls; rows at odd strides, so lanes of consecutive columns hit distinct banks), else
// nullptr: read from global memory.
struct ProjStaged {
  const float* R = nullptr;
  int ldr = 0;
  const float* M = nullptr;
  int ldm = 0;
};

// Floats of R and M staged (ProjStaged) for core c.
__host__ __device__ inline int proj_staged_floats(const ProjCoreArgs& c, int r) {
  return (c.core == kProjRot && c.side != kRotNone ? r * odd_ld(c.bs) : 0) +
         (proj_is_lowrank(c.core) ? r * odd_ld(c.k) : 0);
}
// R and M into shared memory at `at` (proj_staged_floats(c, r) floats) as coalesced copies, where `stage` (the
// per-column reads of the epilogue are strided in global memory); visible after the caller's next barrier.
__device__ __forceinline__ ProjStaged proj_stage(const ProjCoreArgs& c, int r, bool stage, float* at) {
  ProjStaged staged;
  if (!stage) return staged;
  if (c.core == kProjRot && c.side != kRotNone) {
    staged.R = at;
    staged.ldr = odd_ld(c.bs);
    for (int e = threadIdx.x; e < r * c.bs; e += blockDim.x) at[(e / c.bs) * staged.ldr + e % c.bs] = __ldg(c.R + e);
    at += r * staged.ldr;
  }
  if (proj_is_lowrank(c.core)) {
    staged.M = at;
    staged.ldm = odd_ld(c.k);
    for (int e = threadIdx.x; e < r * c.k; e += blockDim.x) at[(e / c.k) * staged.ldm + e % c.k] = __ldg(c.B + e);
  }
  return staged;
}
// Whether a kernel with `floats` of shared memory before the staged R and M also fits them in kSmemBudget (and the
// call is unsteered: a steered row reads its group's parameters).
__host__ __device__ inline bool proj_stages(const ProjCoreArgs& c, int r, size_t floats) {
  return c.coeffs == nullptr && (floats + size_t(proj_staged_floats(c, r))) * sizeof(float) <= kSmemBudget;
}

// Low-rank cores first form Q = (P u) L d (rows x k) in shared memory, a warp per entry (lanes over the r columns:
// coalesced reads of dplr's A rows, then a butterfly sum): the caller's barrier after P and s, one here after Q.
// Every thread reaches it (the core is uniform over the grid).
template <typename T>
__device__ __forceinline__ void proj_epilogue(float* P, const float* s, const float* d, float* Q, int rows, int r,
                                              const ProjCoreArgs& c, const ProjStaged& st_p, int64_t row0, T* h,
                                              T* p_out) {
  const int k = c.k, ldp = proj_ld(r);
  const bool lowrank = proj_is_lowrank(c.core);
  const bool steered = c.coeffs != nullptr;
  if (lowrank) {
    const int lane = threadIdx.x % 32;
    for (int e = threadIdx.x / 32; e < rows * k; e += blockDim.x / 32) {  // warp-uniform
      const int row = e / k, j = e % k;
      const ProjRowCore rc = proj_row_core(c, r, row0 + row);
      const float* pr = P + row * ldp;
      float acc = 0.f;
      if (c.core == kProjDplr)
        for (int col = lane; col < r; col += 32) acc += pr[col] * __ldg(rc.A + int64_t(j) * r + col);
      else  // ablate: s = S whatever the row
        for (int col = lane; col < r; col += 32)
          acc += pr[col] * (steered ? __ldg(c.S + col) : s[col]) *
                 (st_p.M ? st_p.M[col * st_p.ldm + j] : __ldg(rc.A + int64_t(col) * k + j));
      acc = butterfly_sum(acc, 32);
      if (lane == 0) Q[e] = acc * (steered ? proj_weight(c, rc, j) : d[j]);
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
      auto R = [&](int a, int b) { return st_p.R ? st_p.R[(b0 + a) * st_p.ldr + b] : __ldg(Rb + a * bs + b); };
      if (c.side == kRotV) {
        for (int j = 0; j < bs; ++j) acc += R(i, j) * pb[j];
        acc = acc * sc(col);
      } else {
        for (int j = 0; j < bs; ++j) acc += pb[j] * sc(b0 + j) * R(j, i);
      }
    } else {
      acc = pe * sc(col);
      if (lowrank) {
        const float* q = Q + row * k;
        if (st_p.M) {
          const float* m = st_p.M + col * st_p.ldm;
          for (int j = 0; j < k; ++j) acc += q[j] * m[j];
        } else {
          const float* m = rc.B + int64_t(col) * k;
          for (int j = 0; j < k; ++j) acc += q[j] * __ldg(m + j);
        }
      }
    }
    st(h + row0 * r + e, acc);
  }
}

// cp.async of K step `step` (columns 16 step ..) of the x tile (32 rows) and the Vh tile (RP rows) into stage
// step % 2; zero-filled outside x and Vh. Copy c moves half c / 8 % 2 of
// row c / 16 * 8 + c % 8: a quarter warp writes one half of 8 consecutive rows, 8 distinct bank groups at the
// 48-byte row stride (two lanes per row would put rows 0 and 3 in one), and a warp still reads both halves of its
// 16 rows (whole 32-byte sectors).
template <typename T, int RP>
__device__ __forceinline__ void proj_issue(T* stages, int step, const T* x, const T* Vh, int64_t n, int d_in, int r,
                                           int64_t row0) {
  T* sxs = stages + (step & 1) * ((kProjBM + RP) * kProjLd);
  T* svs = sxs + kProjBM * kProjLd;
  const int k0 = step * kProjBK;
  for (int c = threadIdx.x; c < (kProjBM + RP) * 2; c += kProjThreads) {
    const int row = c / 16 * 8 + c % 8, half = c / 8 % 2, kk = k0 + half * 8;
    const bool is_x = row < kProjBM;
    const int rr = is_x ? row : row - kProjBM;
    const bool valid = kk < d_in && (is_x ? row0 + rr < n : rr < r);
    const T* src = !valid ? x : is_x ? x + (row0 + rr) * d_in + kk : Vh + int64_t(rr) * d_in + kk;
    T* dst = (is_x ? sxs : svs) + rr * kProjLd + half * 8;
    ax::cp_async_16_zfill(dst, src, valid);
  }
}

// One CTA: rows [blockIdx.x * 32, +32) x all r columns over all of K; applies the core and writes h (and p).
template <typename T, int NT>
__global__ void __launch_bounds__(kProjThreads, 1)
    project_core_kernel(const T* __restrict__ x, const T* __restrict__ Vh, int64_t n, int d_in, int r, ProjCoreArgs c,
                        bool stage, T* __restrict__ h, T* __restrict__ p_out) {
  constexpr int RP = 16 * NT;  // padded rows of the Vh tile (two warps x NT n-tiles of 8)
  constexpr int kStage = (kProjBM + RP) * kProjLd;
  T* stages = dyn_smem<T>();
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
  const int mi = warp & 1, nh = warp >> 1;
  const int64_t row0 = int64_t(blockIdx.x) * kProjBM;
  const int rows = int(n - row0 < kProjBM ? n - row0 : kProjBM);
  const int n_steps = (d_in + kProjBK - 1) / kProjBK;

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  if (n_steps > 0) proj_issue<T, RP>(stages, 0, x, Vh, n, d_in, r, row0);
  ax::cp_async_commit();
  for (int step = 0; step < n_steps; ++step) {
    if (step + 1 < n_steps) proj_issue<T, RP>(stages, step + 1, x, Vh, n, d_in, r, row0);
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
  const ProjStaged staged = proj_stage(c, r, stage, Q + kProjBM * c.k);
  proj_scales(s, d, r, c);
  __syncthreads();
  proj_epilogue(P, s, d, Q, rows, r, c, staged, row0, h, p_out);
}

// Decode: the partial P (n rows, 32 columns from blockIdx.y * 32, K range blockIdx.x) into the workspace at
// ws[(split * n + row) * r + col].
constexpr int kDecThreads = 128;
constexpr int kDecRows = int(ax::kDecodeRows);
constexpr int kDecCols = int(ax::kDecodeCols);
// Row stride of the decode tiles in 16-bit elements: k + 8 is 4 (mod 32) words for k a multiple of 64, so the
// fragments' 32-bit loads (8 rows x 4 words per warp) and the fill's 16-byte stores (a quarter warp on 8
// consecutive chunks of one row) are conflict-free.
__host__ __device__ inline int decode_ld(int k) { return k + 8; }
constexpr int kDecRedLd = kDecCols + 8;  // the warps' fp32 tiles: 8 (mod 32) floats, conflict-free 8-byte stores
__host__ __device__ inline size_t decode_smem_bytes(int k, size_t elem) {
  const size_t tiles = size_t(kDecRows + kDecCols) * size_t(decode_ld(k)) * elem;
  const size_t red = size_t(kDecThreads / 32) * kDecRows * kDecRedLd * sizeof(float);
  return tiles > red ? tiles : red;
}

template <typename T>
__global__ void __launch_bounds__(kDecThreads)
    project_decode_kernel(const T* __restrict__ x, const T* __restrict__ Vh, int n, int d_in, int r, int k_split,
                          float* __restrict__ ws) {
  const int ld = decode_ld(k_split);
  T* sx = dyn_smem<T>();         // x: rows 0 .. n - 1 (the mma reads zeros for the others)
  T* sv = sx + kDecRows * ld;    // Vh: 32 rows, zero past r and d_in
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
  const int k_begin = int(blockIdx.x) * k_split, col0 = int(blockIdx.y) * kDecCols;
  const int k_len = d_in - k_begin < k_split ? d_in - k_begin : k_split;
  const int per_row = k_split / 8, x_chunks = n * per_row;  // 16-byte chunks
  for (int c = tid; c < x_chunks + kDecCols * per_row; c += kDecThreads) {
    const bool is_x = c < x_chunks;
    const int cc = is_x ? c : c - x_chunks, rr = cc / per_row, kk = cc % per_row * 8;
    const bool valid = kk < k_len && (is_x || col0 + rr < r);
    const T* src = !valid ? x
                   : is_x ? x + int64_t(rr) * d_in + k_begin + kk
                          : Vh + int64_t(col0 + rr) * d_in + k_begin + kk;
    ax::cp_async_16_zfill((is_x ? sx : sv) + rr * ld + kk, src, valid);
  }
  ax::cp_async_commit();
  ax::cp_async_wait<0>();
  __syncthreads();

  float acc[4][4];
#pragma unroll
  for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  const int steps = (k_len + kProjBK - 1) / kProjBK;
  for (int step = warp; step < steps; step += kDecThreads / 32) {
    const T* arow = sx + g * ld + step * kProjBK + tq * 2;
    uint32_t a[4];
    a[0] = g < n ? ld_u32(arow) : 0u;
    a[1] = g + 8 < n ? ld_u32(arow + 8 * ld) : 0u;
    a[2] = g < n ? ld_u32(arow + 8) : 0u;
    a[3] = g + 8 < n ? ld_u32(arow + 8 * ld + 8) : 0u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (col0 + j * 8 < r) {  // warp-uniform
        const T* brow = sv + (j * 8 + g) * ld + step * kProjBK + tq * 2;
        uint32_t b[2];
        b[0] = ld_u32(brow);
        b[1] = ld_u32(brow + 8);
        mma16816<T>(acc[j], a, b, acc[j]);
      }
    }
  }
  __syncthreads();  // the tiles' last reads before the warps' fp32 tiles overwrite them
  float* red = dyn_smem<float>();
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      const int row = g + 8 * h2;
      if (row < n)
        st_pair(red + (warp * kDecRows + row) * kDecRedLd + j * 8 + tq * 2, 2, acc[j][2 * h2], acc[j][2 * h2 + 1]);
    }
  __syncthreads();
  float* part = ws + int64_t(blockIdx.x) * n * r + col0;
  for (int e = tid; e < n * kDecCols; e += kDecThreads) {
    const int row = e / kDecCols, col = e % kDecCols;
    if (col0 + col < r) {
      const float* q = red + row * kDecRedLd + col;
      constexpr int w = kDecRows * kDecRedLd;
      part[int64_t(row) * r + col] = ((q[0] + q[w]) + q[2 * w]) + q[3 * w];
    }
  }
}

// Decode, second stage: a CTA per row; P = the sum over splits of the partials, then the core. The threads of a
// column split its partials into `groups` (api.h finish_groups) interleaved sets (split g, g + groups, ...), each
// summed in split order, and the groups are added in group order: a fixed order for each r. A thread has up to
// kFinishBatch partials in flight, and its first batch is issued before the core's parameters are read and staged,
// so those reads overlap it.
constexpr int kFinishThreads = int(ax::kFinishThreads);
constexpr int kFinishBatch = int(ax::kFinishBatch);
// Shared memory of the finish in floats: the groups' sums (256), the epilogue of one row, then where staged, R and M.
__host__ __device__ inline int finish_floats(int r, int k) { return kFinishThreads + proj_epilogue_floats(r, k, 1); }

template <typename T>
__global__ void __launch_bounds__(kFinishThreads, 1)  // minBlocks 1: else ptxas caps its registers on sm_80 and spills
    project_finish_kernel(const float* __restrict__ ws, int splits, int64_t n, int r, int groups, ProjCoreArgs c,
                          bool stage, T* __restrict__ h, T* __restrict__ p_out) {
  float* sums = dyn_smem<float>();
  float *P = sums + kFinishThreads, *s = P + proj_ld(r), *d = s + r, *Q = d + c.k;
  const int64_t row = blockIdx.x, stride = n * r;
  const int col = int(threadIdx.x) % r, group = int(threadIdx.x) / r;
  const bool sums_col = group < groups;
  const float* src = ws + row * r + col;
  float v[kFinishBatch];
  auto load = [&](int k0) {
#pragma unroll
    for (int j = 0; j < kFinishBatch; ++j)
      v[j] = sums_col && k0 + j * groups < splits ? src[int64_t(k0 + j * groups) * stride] : 0.f;
  };
  load(group);
  const ProjStaged staged = proj_stage(c, r, stage, Q + c.k);
  proj_scales(s, d, r, c);
  float part = 0.f;
  for (int k0 = group;;) {
#pragma unroll
    for (int j = 0; j < kFinishBatch; ++j) part += v[j];
    k0 += groups * kFinishBatch;
    if (k0 >= splits) break;
    load(k0);
  }
  if (sums_col) sums[group * r + col] = part;
  __syncthreads();
  for (int j = threadIdx.x; j < r; j += blockDim.x) {
    float tot = sums[j];
    for (int g = 1; g < groups; ++g) tot += sums[g * r + j];
    P[j] = tot;
  }
  __syncthreads();
  proj_epilogue(P, s, d, Q, 1, r, c, staged, row, h, p_out);
}

// Decode of the columnwise cores, one kernel (see the top of the file): N rows, kGemvCols columns from
// blockIdx.x * kGemvCols. Shared memory: the warps' sums (warps x N x kGemvCols floats).
constexpr int kGemvThreads = int(ax::kGemvThreads);
constexpr int kGemvCols = int(ax::kGemvCols);

// B: K chunks a thread has in flight (api.h gemv_batch: at 4 for more than one row ptxas spills the bf16 kernels for
// sm_90).
template <typename T, int N, int B>
__global__ void __launch_bounds__(kGemvThreads, 1)
    project_gemv_kernel(const T* __restrict__ x, const T* __restrict__ Vh, int d_in, int r, ProjCoreArgs c,
                        T* __restrict__ h, T* __restrict__ p_out) {
  constexpr int C = kGemvCols, V = 8, W = kGemvThreads / 32;
  float* red = dyn_smem<float>();
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int col0 = int(blockIdx.x) * C, cols = r - col0 < C ? r - col0 : C, chunks = d_in / V;
  float acc[N][C];
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < C; ++j) acc[i][j] = 0.f;
  for (int k0 = tid; k0 < chunks; k0 += kGemvThreads * B) {
    Vec<T> wv[B][C], xv[B][N];
#pragma unroll
    for (int b = 0; b < B; ++b) {  // every load of the batch before any use
      const int kc = k0 + b * kGemvThreads;
      if (kc < chunks) {
#pragma unroll
        for (int j = 0; j < C; ++j)
          if (j < cols) wv[b][j] = ld_vec(Vh + int64_t(col0 + j) * d_in + int64_t(kc) * V);
#pragma unroll
        for (int i = 0; i < N; ++i) xv[b][i] = ld_vec(x + int64_t(i) * d_in + int64_t(kc) * V);
      }
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
      if (k0 + b * kGemvThreads >= chunks) break;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        float a[V];
        widen(a, xv[b][i]);
#pragma unroll
        for (int j = 0; j < C; ++j) {
          if (j >= cols) break;
          float w[V];
          widen(w, wv[b][j]);
#pragma unroll
          for (int q = 0; q < V; ++q) acc[i][j] += a[q] * w[q];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const float v = butterfly_sum(acc[i][j], 32);
      if (lane == 0) red[warp * N * C + i * C + j] = v;
    }
  __syncthreads();
  if (tid < N * C && tid % C < cols) {
    const int i = tid / C, col = col0 + tid % C;
    float pe = 0.f;
    for (int w = 0; w < W; ++w) pe += red[w * N * C + tid];
    if (p_out) st(p_out + int64_t(i) * r + col, pe);
    st(h + int64_t(i) * r + col, pe * proj_scale(c, proj_row_core(c, r, i), col));
  }
}

// ------------------------------------------------------------------------------------------ launch

template <typename T, int NT>
void launch_project_tile(const T* x, const T* Vh, int64_t n, int64_t d_in, int64_t r, const ProjCoreArgs& c, T* h,
                         T* p_out, ax::stream_t st) {
  constexpr int RP = 16 * NT;
  const size_t stage_bytes = size_t(2) * (kProjBM + RP) * kProjLd * sizeof(T);
  const size_t epi_floats = size_t(proj_epilogue_floats(int(r), c.k, kProjBM));
  const bool stage = proj_stages(c, int(r), epi_floats);
  const size_t epi_bytes = (epi_floats + (stage ? proj_staged_floats(c, int(r)) : 0)) * sizeof(float);
  AX_LAUNCH((project_core_kernel<T, NT>), dim3(blocks_for(n, kProjBM)), dim3(kProjThreads),
            stage_bytes > epi_bytes ? stage_bytes : epi_bytes, st, x, Vh, n, int(d_in), int(r), c, stage, h, p_out);
  AX_CHECK_LAUNCH();
}

template <typename T, int N>
void launch_project_gemv(const T* x, const T* Vh, int64_t d_in, int64_t r, const ProjCoreArgs& c, T* h, T* p_out,
                         ax::stream_t st) {
  constexpr int B = int(ax::gemv_batch(N));
  AX_LAUNCH((project_gemv_kernel<T, N, B>), dim3(unsigned(blocks_for(r, kGemvCols))), dim3(kGemvThreads),
            size_t(kGemvThreads / 32) * N * kGemvCols * sizeof(float), st, x, Vh, int(d_in), int(r), c, h, p_out);
  AX_CHECK_LAUNCH();
}

// h (and p) of n rows: the one-kernel decode where `gemv` (api.h project_gemv), else for n <= 16 the decode kernel
// and its finish (ws: project_workspace_elems floats), else the row tiles with NT n-tiles per warp for r.
template <typename T>
void launch_project(const T* x, const T* Vh, int64_t n, int64_t d_in, int64_t r, const ProjCoreArgs& c, bool gemv,
                    T* h, T* p_out, float* ws, ax::stream_t st) {
  static_assert(ax::kGemvRows == 4, "one instantiation of project_gemv_kernel per row count");
  if (gemv) {
    if (n == 1) launch_project_gemv<T, 1>(x, Vh, d_in, r, c, h, p_out, st);
    else if (n == 2) launch_project_gemv<T, 2>(x, Vh, d_in, r, c, h, p_out, st);
    else if (n == 3) launch_project_gemv<T, 3>(x, Vh, d_in, r, c, h, p_out, st);
    else launch_project_gemv<T, 4>(x, Vh, d_in, r, c, h, p_out, st);
  } else if (ax::project_decodes(n)) {
    const int64_t k_split = ax::project_decode_k(d_in, r), splits = ax::project_decode_splits(d_in, r);
    AX_LAUNCH((project_decode_kernel<T>), dim3(unsigned(splits), unsigned(blocks_for(r, kDecCols))),
              dim3(kDecThreads), decode_smem_bytes(int(k_split), sizeof(T)), st, x, Vh, int(n), int(d_in), int(r),
              int(k_split), ws);
    AX_CHECK_LAUNCH();
    const size_t floats = size_t(finish_floats(int(r), c.k));
    const bool stage = proj_stages(c, int(r), floats);
    AX_LAUNCH((project_finish_kernel<T>), dim3(unsigned(n)), dim3(kFinishThreads),
              (floats + (stage ? proj_staged_floats(c, int(r)) : 0)) * sizeof(float), st, ws, int(splits), n, int(r),
              int(ax::finish_groups(r)), c, stage, h, p_out);
    AX_CHECK_LAUNCH();
  } else if (r <= 64) {
    launch_project_tile<T, 4>(x, Vh, n, d_in, r, c, h, p_out, st);
  } else if (r <= 128) {
    launch_project_tile<T, 8>(x, Vh, n, d_in, r, c, h, p_out, st);
  } else {
    launch_project_tile<T, 16>(x, Vh, n, d_in, r, c, h, p_out, st);
  }
}

}  // namespace kern
}  // namespace AX_KERNEL_NS
}  // namespace ax
