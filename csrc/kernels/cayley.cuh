// Batched block Cayley kernels (SPEC §2): per block b of rot_T (n_blocks, bs*(bs-1)/2),
//   A = a_lim * tanh(skew(T) / a_lim),  M = I - coeff*A/2,  R = 2 M^-1 - I,
// and the analytic backward dT from G = dL/dR through Minv = (R + I)/2 (no second solve):
//   dX = 2 Minv^T G Minv^T,  dA = coeff/2 * dX * (1 - tanh^2),  dT_ij = (dA_ij - dA_ji)/2.
//
// Two kernels per direction:
//   * bs <= 8: one thread per Cayley block, templated on BS, fully unrolled, the matrices in
//     registers (M in place, Gauss-Jordan without pivoting). The CTA's blocks are contiguous in t, R,
//     G and dt: it moves them between global and shared memory as whole contiguous slices (every
//     warp access whole sectors) and each thread reads and writes its block there, at an odd stride.
//   * 8 < bs <= 64: one CTA per Cayley block, matrices in shared memory, one element per thread
//     per elimination step (two barriers a step).
// No closed form for bs 2-4: the register path's forward kernel is 160 / 245 / 504 PTX instructions (fp32, bs 2 / 3 /
// 4, fully unrolled, staging included; the solve is bs reciprocals and bs^2 (bs - 1) FMAs), a few hundred cycles
// (about 0.1-0.25 us) in a launch that waits one DRAM round trip (~0.6 us) for t and, under ax.shared_rotations,
// runs once per optimizer step and coefficient for the whole model; the backward has no solve to replace; and a
// closed form would end the bit-for-bit match with the C++ CPU kernels.
// M = I - X with X skew is never singular and needs no pivot (SPEC §2), so nothing is checked and
// nothing is ever reported to the host: the kernels never synchronise with it.
//
// Arithmetic mirrors ax::cayley_block_forward / cayley_block_backward (csrc/kernels/math.h)
// operation for operation (in-place Gauss-Jordan computes the same values as the [M | I] form),
// so without FMA contraction (the CPU emulation) the results equal the C++ CPU kernels bit for bit.
//
// Torch-free; include emu/portability.cuh first (nvcc, or g++ with AX_EMULATE_CUDA).
#pragma once

#include "csrc/kernels/math.h"
#include "emu/portability.cuh"
#include "csrc/kernels/kernel_ns.h"

namespace ax {
namespace AX_KERNEL_NS {
namespace kern {

constexpr int kCayleySmallMax = 8;      // register path up to this block size
constexpr int kCayleySmallThreads = 64;  // threads (= Cayley blocks) per CTA on the register path, at most
constexpr int kCayleyCtaThreads = 256;  // threads per CTA on the shared-memory path

// The coefficient of Cayley block b: coeffs[b / per] when given (one per steering group), else `value`.
template <typename acc_t>
struct BlockCoeff {
  const acc_t* coeffs;
  int64_t per;
  acc_t value;
  __device__ __forceinline__ acc_t at(int64_t b) const { return coeffs ? __ldg(coeffs + b / per) : value; }
};

// ------------------------------------------------------------------------------- bs <= 8: registers

// Row stride of staged entries read a column at a time (one row per thread): odd, so the threads hit distinct banks.
__host__ __device__ constexpr int cayley_stage_ld(int n) { return n % 2 ? n : n + 1; }
__host__ __device__ constexpr bool cayley_swizzles(int n) { return n >= 4 && (n & (n - 1)) == 0; }
__host__ __device__ constexpr int cayley_layout_ld(int n) { return cayley_swizzles(n) ? n : cayley_stage_ld(n); }
// Where entry e of staged block b lives, N entries a block. A power of two N (R and G at bs 2, 4, 8): stride N, e's low
// bits xor-ed by bits of b, so that both the threads' accesses (one block each, one entry) and the contiguous copies
// hit distinct banks. Other N: the odd stride (the threads' accesses conflict-free; a copy's warp access is 2-way where
// its 32 entries straddle the wrap of the banks).
template <int N>
__host__ __device__ constexpr int cayley_swizzle(int b) {
  if constexpr (cayley_swizzles(N)) {
    constexpr int per = N >= 32 ? 1 : 32 / N, mask = (N < 32 ? N : 32) - 1;
    return (b / per) & mask;
  } else {
    return 0;
  }
}
template <int N>
__host__ __device__ constexpr int cayley_at(int b, int e) {
  return b * cayley_layout_ld(N) + (e ^ cayley_swizzle<N>(b));
}
// Block b's staged entries as a thread reads them: base pointer and swizzle computed once.
template <int N, typename acc_t>
struct CayleyRow {
  acc_t* base;
  int sw;
  __device__ __forceinline__ CayleyRow(acc_t* staged, int b)
      : base(staged + b * cayley_layout_ld(N)), sw(cayley_swizzle<N>(b)) {}
  __device__ __forceinline__ acc_t& operator[](int e) const { return base[e ^ sw]; }
};
// Shared memory of the register path for `threads` blocks per CTA: t (and dt) | R | G (backward).
__host__ __device__ constexpr size_t cayley_small_smem(int bs, size_t acc_bytes, int threads, bool backward) {
  const int per_block = cayley_layout_ld(bs * (bs - 1) / 2) + (backward ? 2 : 1) * cayley_layout_ld(bs * bs);
  return size_t(threads) * size_t(per_block) * acc_bytes;
}
// Blocks per CTA of the register path: 64, or 32 where 64 blocks' staging passes 48 KiB (f64 backward at bs >= 7).
inline int cayley_small_threads(int bs, size_t acc_bytes, bool backward) {
  return cayley_small_smem(bs, acc_bytes, kCayleySmallThreads, backward) <= kSmemBudget ? kCayleySmallThreads
                                                                                        : kCayleySmallThreads / 2;
}

// src (count blocks of N values each, contiguous) into dst at cayley_at<N>, or back.
template <int N, typename acc_t>
__device__ __forceinline__ void cayley_stage_in(acc_t* dst, const acc_t* __restrict__ src, int count) {
  for (int e = threadIdx.x; e < count * N; e += blockDim.x) dst[cayley_at<N>(e / N, e % N)] = __ldg(src + e);
}
template <int N, typename acc_t>
__device__ __forceinline__ void cayley_stage_out(acc_t* __restrict__ dst, const acc_t* src, int count) {
  for (int e = threadIdx.x; e < count * N; e += blockDim.x) dst[e] = src[cayley_at<N>(e / N, e % N)];
}

template <int BS, typename acc_t>
__global__ void __launch_bounds__(kCayleySmallThreads)
    cayley_forward_small_kernel(const acc_t* __restrict__ t, int64_t n_blocks, acc_t a_lim, BlockCoeff<acc_t> cf,
                                acc_t* __restrict__ R) {
  constexpr int kM = BS * (BS - 1) / 2, kNN = BS * BS;
  acc_t* ts = dyn_smem<acc_t>();
  acc_t* Rs = ts + blockDim.x * cayley_layout_ld(kM);
  const int64_t b0 = int64_t(blockIdx.x) * blockDim.x;
  const int count = int(n_blocks - b0 < int64_t(blockDim.x) ? n_blocks - b0 : int64_t(blockDim.x));
  cayley_stage_in<kM>(ts, t + b0 * kM, count);
  __syncthreads();
  if (int(threadIdx.x) < count) {
    const acc_t coeff = cf.at(b0 + threadIdx.x);
    const CayleyRow<kM, acc_t> tb(ts, threadIdx.x);
    const CayleyRow<kNN, acc_t> Rb(Rs, threadIdx.x);
    acc_t M[BS][BS];
    // M = I - coeff * A / 2 (A clamped skew), computed as (-coeff * A) / 2 like cayley_block_forward.
#pragma unroll
    for (int i = 0; i < BS; ++i) {
      M[i][i] = acc_t(1);
#pragma unroll
      for (int j = i + 1; j < BS; ++j) {
        const acc_t a = a_lim * tanh((tb[triu_index(i, j, BS)] / acc_t(2)) / a_lim);
        M[i][j] = -coeff * a / acc_t(2);
        M[j][i] = -coeff * (-a) / acc_t(2);
      }
    }
    // In-place Gauss-Jordan without pivoting: M <- M^-1.
#pragma unroll
    for (int c = 0; c < BS; ++c) {
      const acc_t rp = acc_t(1) / M[c][c];
      M[c][c] = acc_t(1);
#pragma unroll
      for (int j = 0; j < BS; ++j) M[c][j] *= rp;
#pragma unroll
      for (int i = 0; i < BS; ++i) {
        if (i == c) continue;
        const acc_t f = M[i][c];
        M[i][c] = acc_t(0);
        if (f != acc_t(0)) {
#pragma unroll
          for (int j = 0; j < BS; ++j) M[i][j] -= f * M[c][j];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < BS; ++i)
#pragma unroll
      for (int j = 0; j < BS; ++j)
        Rb[i * BS + j] = acc_t(2) * M[i][j] - (i == j ? acc_t(1) : acc_t(0));
  }
  __syncthreads();
  cayley_stage_out<kNN>(R + b0 * kNN, Rs, count);
}

template <int BS, typename acc_t>
__global__ void __launch_bounds__(kCayleySmallThreads, 1)  // minBlocks 1: else ptxas caps its registers on sm_80 and spills
    cayley_backward_small_kernel(const acc_t* __restrict__ G, const acc_t* __restrict__ R,
                                 const acc_t* __restrict__ t, int64_t n_blocks, acc_t a_lim, BlockCoeff<acc_t> cf,
                                 acc_t* __restrict__ dt) {
  constexpr int kM = BS * (BS - 1) / 2, kNN = BS * BS;
  acc_t* ts = dyn_smem<acc_t>();  // t, then dt in its place (each entry read before the same thread writes it)
  acc_t* Rs = ts + blockDim.x * cayley_layout_ld(kM);
  acc_t* Gs = Rs + blockDim.x * cayley_layout_ld(kNN);
  const int64_t b0 = int64_t(blockIdx.x) * blockDim.x;
  const int count = int(n_blocks - b0 < int64_t(blockDim.x) ? n_blocks - b0 : int64_t(blockDim.x));
  cayley_stage_in<kM>(ts, t + b0 * kM, count);
  cayley_stage_in<kNN>(Rs, R + b0 * kNN, count);
  cayley_stage_in<kNN>(Gs, G + b0 * kNN, count);
  __syncthreads();
  if (int(threadIdx.x) < count) {
    const acc_t coeff = cf.at(b0 + threadIdx.x);
    const CayleyRow<kM, acc_t> tb(ts, threadIdx.x);
    const CayleyRow<kNN, acc_t> Rb(Rs, threadIdx.x), Gb(Gs, threadIdx.x);
    acc_t Minv[BS][BS];
#pragma unroll
    for (int i = 0; i < BS; ++i)
#pragma unroll
      for (int j = 0; j < BS; ++j)
        Minv[i][j] = (Rb[i * BS + j] + (i == j ? acc_t(1) : acc_t(0))) / acc_t(2);
    // dX row by row: tmp_i = (Minv^T G)_i, dX_ij = 2 tmp_i . Minv_j. The upper triangle of dX waits in
    // registers for its transposed partner from a later row.
    acc_t upper[kM > 0 ? kM : 1];
    const acc_t half_coeff = coeff / acc_t(2);
#pragma unroll
    for (int i = 0; i < BS; ++i) {
      acc_t tmp[BS];
#pragma unroll
      for (int j = 0; j < BS; ++j) {
        acc_t s = 0;
#pragma unroll
        for (int k = 0; k < BS; ++k) s += Minv[k][i] * Gb[k * BS + j];
        tmp[j] = s;
      }
#pragma unroll
      for (int j = 0; j < BS; ++j) {
        if (j == i) continue;
        acc_t s = 0;
#pragma unroll
        for (int k = 0; k < BS; ++k) s += tmp[k] * Minv[j][k];
        const acc_t dX = acc_t(2) * s;
        if (j > i) {
          upper[triu_index(i, j, BS)] = dX;
        } else {  // pair (j, i), j < i: dX_ji waited in `upper`, dX_ij is this one
          const int q = triu_index(j, i, BS);
          const acc_t th = tanh((tb[q] / acc_t(2)) / a_lim);
          const acc_t dtanh = acc_t(1) - th * th;
          const acc_t dA_up = half_coeff * upper[q] * dtanh;
          const acc_t dA_lo = half_coeff * dX * dtanh;
          tb[q] = (dA_up - dA_lo) / acc_t(2);
        }
      }
    }
  }
  __syncthreads();
  cayley_stage_out<kM>(dt + b0 * kM, ts, count);
}

// --------------------------------------------------------------------- 8 < bs <= 64: CTA per block

// Shared memory: M (bs * bs, row-major: the elimination's accesses of consecutive entries are conflict-free; a pivot
// column's bs reads per step are not, at a power-of-two bs) | col (bs) | row (bs) | where `stage_t`, the block's
// generators t (m; read once, coalesced, instead of once per matrix entry).
template <typename acc_t>
__global__ void __launch_bounds__(kCayleyCtaThreads)
    cayley_forward_cta_kernel(const acc_t* __restrict__ t, int bs, acc_t a_lim, BlockCoeff<acc_t> cf, bool stage_t,
                              acc_t* __restrict__ R) {
  const int ld = bs;
  acc_t* M = dyn_smem<acc_t>();
  acc_t* col = M + bs * ld;
  acc_t* row = col + bs;
  acc_t* ts = row + bs;
  const int64_t b = blockIdx.x;
  const acc_t coeff = cf.at(b);
  const int m = bs * (bs - 1) / 2;
  const acc_t* tb = t + b * m;
  const int tid = threadIdx.x, nt = blockDim.x, nn = bs * bs;
  if (stage_t) {
    for (int q = tid; q < m; q += nt) ts[q] = __ldg(tb + q);
    __syncthreads();
  }
  auto gen = [&](int q) { return stage_t ? ts[q] : __ldg(tb + q); };
  for (int e = tid; e < nn; e += nt) {
    const int i = e / bs, j = e % bs;
    acc_t v = acc_t(1);
    if (i < j) {
      const acc_t a = a_lim * tanh((gen(triu_index(i, j, bs)) / acc_t(2)) / a_lim);
      v = -coeff * a / acc_t(2);
    } else if (i > j) {
      const acc_t a = a_lim * tanh((gen(triu_index(j, i, bs)) / acc_t(2)) / a_lim);
      v = -coeff * (-a) / acc_t(2);
    }
    M[i * ld + j] = v;
  }
  __syncthreads();
  for (int c = 0; c < bs; ++c) {
    // Pivot row scaled by 1 / M_cc (with M_cc itself replaced by 1: the inverse's column starts as e_c)
    // and the multipliers of column c, read before anything of step c is written.
    for (int j = tid; j < bs; j += nt) {
      const acc_t rp = acc_t(1) / M[c * ld + c];
      row[j] = (j == c ? acc_t(1) : M[c * ld + j]) * rp;
      col[j] = M[j * ld + c];
    }
    __syncthreads();
    for (int e = tid; e < nn; e += nt) {
      const int i = e / bs, j = e % bs;
      if (i == c) {
        M[i * ld + j] = row[j];
      } else {
        const acc_t f = col[i];
        acc_t v = j == c ? acc_t(0) : M[i * ld + j];
        if (f != acc_t(0)) v -= f * row[j];
        M[i * ld + j] = v;
      }
    }
    __syncthreads();
  }
  acc_t* Rb = R + b * nn;
  for (int e = tid; e < nn; e += nt) {
    const int i = e / bs, j = e % bs;
    Rb[e] = acc_t(2) * M[i * ld + j] - (i == j ? acc_t(1) : acc_t(0));
  }
}

// Shared memory: tmp = Minv^T G (bs rows at the odd stride cayley_stage_ld(bs)) | where `stage`, Minv = (R + I)/2 and
// G (the same stride; staged by contiguous reads of R and G, else read from global memory where used).
template <typename acc_t>
__global__ void __launch_bounds__(kCayleyCtaThreads)
    cayley_backward_cta_kernel(const acc_t* __restrict__ G, const acc_t* __restrict__ R,
                               const acc_t* __restrict__ t, int bs, acc_t a_lim, BlockCoeff<acc_t> cf,
                               bool stage, acc_t* __restrict__ dt) {
  const int ld = cayley_stage_ld(bs);
  acc_t* tmp = dyn_smem<acc_t>();
  acc_t* Ms = tmp + bs * ld;
  acc_t* Gs = Ms + bs * ld;
  const int64_t b = blockIdx.x;
  const acc_t coeff = cf.at(b);
  const int m = bs * (bs - 1) / 2, nn = bs * bs;
  const acc_t* Gb = G + b * nn;
  const acc_t* Rb = R + b * nn;
  const acc_t* tb = t + b * m;
  const int tid = threadIdx.x, nt = blockDim.x;
  auto minv_of = [&](int i, int j) { return (__ldg(Rb + i * bs + j) + (i == j ? acc_t(1) : acc_t(0))) / acc_t(2); };
  if (stage) {
    for (int e = tid; e < nn; e += nt) {
      Ms[(e / bs) * ld + e % bs] = minv_of(e / bs, e % bs);
      Gs[(e / bs) * ld + e % bs] = __ldg(Gb + e);
    }
    __syncthreads();
  }
  auto minv = [&](int i, int j) { return stage ? Ms[i * ld + j] : minv_of(i, j); };
  auto g = [&](int i, int j) { return stage ? Gs[i * ld + j] : __ldg(Gb + i * bs + j); };
  for (int e = tid; e < nn; e += nt) {
    const int i = e / bs, j = e % bs;
    acc_t s = 0;
    for (int k = 0; k < bs; ++k) s += minv(k, i) * g(k, j);
    tmp[i * ld + j] = s;
  }
  __syncthreads();
  const acc_t half_coeff = coeff / acc_t(2);
  for (int e = tid; e < nn; e += nt) {
    const int i = e / bs, j = e % bs;
    if (i >= j) continue;
    acc_t s_ij = 0, s_ji = 0;
    for (int k = 0; k < bs; ++k) s_ij += tmp[i * ld + k] * minv(j, k);
    for (int k = 0; k < bs; ++k) s_ji += tmp[j * ld + k] * minv(i, k);
    const int q = triu_index(i, j, bs);
    const acc_t th = tanh((__ldg(tb + q) / acc_t(2)) / a_lim);
    const acc_t dtanh = acc_t(1) - th * th;
    const acc_t dA_ij = half_coeff * (acc_t(2) * s_ij) * dtanh;
    const acc_t dA_ji = half_coeff * (acc_t(2) * s_ji) * dtanh;
    dt[b * m + q] = (dA_ij - dA_ji) / acc_t(2);
  }
}

// --------------------------------------------------------------------------------------- launchers

// Shared memory of the CTA kernels, with their optional staging where it keeps a CTA within kSmemBudget (where it does
// not, they read from global memory instead: t in the float64 forward at bs 64, Minv and G in the backward at float32
// bs 64 and float64 bs >= 46).
inline size_t cayley_forward_cta_smem(int bs, size_t acc_bytes, bool stage_t) {
  return size_t(bs * bs + 2 * bs + (stage_t ? bs * (bs - 1) / 2 : 0)) * acc_bytes;
}
inline size_t cayley_backward_cta_smem(int bs, size_t acc_bytes, bool stage) {
  return size_t((stage ? 3 : 1) * bs * cayley_stage_ld(bs)) * acc_bytes;
}

template <typename acc_t>
void launch_cayley_forward(const acc_t* t, int64_t n_blocks, int bs, acc_t a_lim, BlockCoeff<acc_t> coeff, acc_t* R,
                           ax::stream_t stream) {
  if (n_blocks <= 0) return;
  if (bs <= kCayleySmallMax) {
    const int threads = cayley_small_threads(bs, sizeof(acc_t), false);
    const dim3 grid(unsigned((n_blocks + threads - 1) / threads)), block(threads);
    const size_t smem = cayley_small_smem(bs, sizeof(acc_t), threads, false);
    switch (bs) {
#define AX_CAYLEY_FWD_CASE(BS)                                                                                  \
  case BS:                                                                                                      \
    AX_LAUNCH((cayley_forward_small_kernel<BS, acc_t>), grid, block, smem, stream, t, n_blocks, a_lim, coeff, R); \
    break;
      AX_CAYLEY_FWD_CASE(2)
      AX_CAYLEY_FWD_CASE(3)
      AX_CAYLEY_FWD_CASE(4)
      AX_CAYLEY_FWD_CASE(5)
      AX_CAYLEY_FWD_CASE(6)
      AX_CAYLEY_FWD_CASE(7)
      AX_CAYLEY_FWD_CASE(8)
#undef AX_CAYLEY_FWD_CASE
      default:
        break;
    }
  } else {
    const bool stage_t = cayley_forward_cta_smem(bs, sizeof(acc_t), true) <= kSmemBudget;
    AX_LAUNCH((cayley_forward_cta_kernel<acc_t>), dim3(unsigned(n_blocks)), dim3(kCayleyCtaThreads),
              cayley_forward_cta_smem(bs, sizeof(acc_t), stage_t), stream, t, bs, a_lim, coeff, stage_t, R);
  }
  AX_CHECK_LAUNCH();
}

template <typename acc_t>
void launch_cayley_backward(const acc_t* G, const acc_t* R, const acc_t* t, int64_t n_blocks, int bs, acc_t a_lim,
                            BlockCoeff<acc_t> coeff, acc_t* dt, ax::stream_t stream) {
  if (n_blocks <= 0) return;
  if (bs <= kCayleySmallMax) {
    const int threads = cayley_small_threads(bs, sizeof(acc_t), true);
    const dim3 grid(unsigned((n_blocks + threads - 1) / threads)), block(threads);
    const size_t smem = cayley_small_smem(bs, sizeof(acc_t), threads, true);
    switch (bs) {
#define AX_CAYLEY_BWD_CASE(BS)                                                                           \
  case BS:                                                                                               \
    AX_LAUNCH((cayley_backward_small_kernel<BS, acc_t>), grid, block, smem, stream, G, R, t, n_blocks, a_lim, \
              coeff, dt);                                                                                \
    break;
      AX_CAYLEY_BWD_CASE(2)
      AX_CAYLEY_BWD_CASE(3)
      AX_CAYLEY_BWD_CASE(4)
      AX_CAYLEY_BWD_CASE(5)
      AX_CAYLEY_BWD_CASE(6)
      AX_CAYLEY_BWD_CASE(7)
      AX_CAYLEY_BWD_CASE(8)
#undef AX_CAYLEY_BWD_CASE
      default:
        break;
    }
  } else {
    const bool stage = cayley_backward_cta_smem(bs, sizeof(acc_t), true) <= kSmemBudget;
    AX_LAUNCH((cayley_backward_cta_kernel<acc_t>), dim3(unsigned(n_blocks)), dim3(kCayleyCtaThreads),
              cayley_backward_cta_smem(bs, sizeof(acc_t), stage), stream, G, R, t, bs, a_lim, coeff, stage, dt);
  }
  AX_CHECK_LAUNCH();
}

}  // namespace kern
}  // namespace AX_KERNEL_NS
}  // namespace ax
