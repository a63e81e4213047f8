// Test kernels for the CUDA emulator. The same source is compiled by the host
// compiler with AX_EMULATE_CUDA (emu/tests/test_emu_*.cpp) and by nvcc
// (emu/tests/nvcc_compile_check.cu) to keep portability.cuh honest.
#pragma once

#include "emu/portability.cuh"

namespace emu_test {

// Block-wide tree reduction over 256 elements; kSync=false drops the barriers.
template <bool kSync>
__global__ void block_sum_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  AX_SHARED(float, s, [256]);
  const int tid = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + tid;
  s[tid] = i < n ? in[i] : 0.f;
  if (kSync) __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (tid < stride) s[tid] += s[tid + stride];
    if (kSync) __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = s[0];
}

// Only the first `written` threads store into shared memory; everyone reads.
__global__ void unwritten_smem_kernel(float* out_f, int* out_i, int written) {
  AX_SHARED(float, sf, [64]);
  AX_SHARED(int, si, [64]);
  const int tid = threadIdx.x;
  if (blockIdx.x == 0 && tid < written) {
    sf[tid] = 1.0f + tid;
    si[tid] = tid;
  }
  __syncthreads();
  out_f[blockIdx.x * blockDim.x + tid] = sf[tid];
  out_i[blockIdx.x * blockDim.x + tid] = si[tid];
}

// Dynamic shared memory: every block sums 2 * blockDim.x values through smem.
__global__ void dynamic_smem_kernel(const float* in, float* out) {
  AX_DYNAMIC_SHARED(float, buf);
  const unsigned t = threadIdx.x, nb = blockDim.x;
  buf[t] = in[blockIdx.x * 2 * nb + t];
  buf[t + nb] = in[blockIdx.x * 2 * nb + nb + t];
  __syncthreads();
  out[blockIdx.x * nb + t] = buf[t] + buf[2 * nb - 1 - t];
}

__global__ void dynamic_smem_poison_kernel(float* out) {
  AX_DYNAMIC_SHARED(float, buf);
  if (blockIdx.x == 0) buf[threadIdx.x] = 7.0f;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// Writes one element past the dynamic arena (ASan death test).
__global__ void dynamic_smem_overflow_kernel(float* out, int n_floats) {
  AX_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = buf[n_floats];
}

// Reads past a static shared array (ASan death test).
__global__ void static_smem_overflow_kernel(float* out, int idx) {
  AX_SHARED(float, tile, [8][8]);
  tile[threadIdx.x / 8][threadIdx.x % 8] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = (&tile[0][0])[idx];
}

#if AX_EMULATION
// 52 KB of static shared memory: over the 48 KiB static limit (ptxas rejects
// it at compile time, the emulator at run time).
__global__ void too_much_static_smem_kernel(float* out) {
  AX_SHARED(float, big, [13000]);
  big[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = big[threadIdx.x];
}
#endif

// Only some threads reach the barrier, the others exit.
__global__ void divergent_barrier_exit_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
    out[threadIdx.x] = 1.0f;
  }
}

// Two different barrier call sites.
__global__ void divergent_barrier_sites_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Half of the warp exits while the other half shuffles with a full mask.
__global__ void divergent_shfl_exit_kernel(float* out) {
  const unsigned lane = threadIdx.x % 32;
  if (lane < 16) out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f * lane, 0);
}

// Lanes of one mask reach two different collectives.
__global__ void divergent_collectives_kernel(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  if (lane < 16)
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, lane, 1);
  else
    out[threadIdx.x] = __ballot_sync(0xffffffffu, lane & 1);
}

// Lane 0 goes to a block barrier while the rest of its warp waits in a shuffle.
__global__ void shfl_vs_barrier_deadlock_kernel(float* out) {
  float v = 1.0f * threadIdx.x;
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    v = __shfl_down_sync(0xffffffffu, v, 1);
    __syncthreads();
  }
  out[threadIdx.x] = v;
}

// Warp shuffles and votes; 15 outputs per thread.
__global__ void warp_ops_kernel(float* outf, int* outi, double* outd) {
  const unsigned tid = threadIdx.x, lane = tid % 32;
  const unsigned full = 0xffffffffu;
  float* f = outf + tid * 8;
  int* i = outi + tid * 8;
  // xor butterfly: every lane gets the warp sum
  float v = 1.0f + lane;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(full, v, off);
  f[0] = v;
  // down-reduction: lane 0 gets the sum
  float d = 1.0f + lane;
  for (int off = 16; off > 0; off >>= 1) d += __shfl_down_sync(full, d, off);
  f[1] = d;
  f[2] = __shfl_down_sync(full, 100.0f + lane, 3);
  f[3] = __shfl_up_sync(full, 100.0f + lane, 3);
  f[4] = __shfl_sync(full, 100.0f + lane, 5);               // broadcast lane 5
  f[5] = __shfl_sync(full, 100.0f + lane, 2, 8);            // lane 2 of each group of 8
  f[6] = __shfl_up_sync(full, 100.0f + lane, 1, 16);        // width 16
  f[7] = __shfl_xor_sync(full, 100.0f + lane, 8, 8);        // xor beyond width: own value
  i[0] = static_cast<int>(__ballot_sync(full, lane % 3 == 0));
  i[1] = __any_sync(full, lane == 7);
  i[2] = __any_sync(full, 0);
  i[3] = __all_sync(full, lane < 32);
  i[4] = __all_sync(full, lane < 31);
  i[5] = __shfl_sync(full, static_cast<int>(lane) * -3, 31);
  i[6] = static_cast<int>(__shfl_xor_sync(full, lane * 7u, 31));
  // partial mask: lanes 0..15 only
  if (lane < 16) i[7] = static_cast<int>(__ballot_sync(0x0000ffffu, lane >= 8));
  __syncwarp();
  outd[tid] = __shfl_down_sync(full, 0.5 + lane, 16);
}

// Partial warp (blockDim 48): full-mask shuffle reads lanes that do not exist.
__global__ void partial_warp_kernel(float* out) {
  const unsigned lane = threadIdx.x % 32;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f + lane, 8);
}

// 2-D grid / 3-D block indexing.
__global__ void indexing_kernel(int* out, unsigned* warp_ballot) {
  const unsigned bx = blockIdx.x, by = blockIdx.y, bz = blockIdx.z;
  const unsigned gx = bx * blockDim.x + threadIdx.x;
  const unsigned gy = by * blockDim.y + threadIdx.y;
  const unsigned gz = bz * blockDim.z + threadIdx.z;
  const unsigned W = gridDim.x * blockDim.x, H = gridDim.y * blockDim.y;
  out[(gz * H + gy) * W + gx] = static_cast<int>(gx + 1000 * gy + 1000000 * gz);
  const unsigned lin = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
  const unsigned b = __ballot_sync(0xffffffffu, threadIdx.y == 1 && threadIdx.z == 0);
  if (bx == 0 && by == 0 && bz == 0 && lin % 32 == 0) warp_ballot[lin / 32] = b;
}

// 256 threads, 10 barriers: timing workload.
__global__ void barrier_heavy_kernel(float* out) {
  AX_SHARED(float, s, [256]);
  const unsigned t = threadIdx.x;
  float acc = 0.f;
  s[t] = static_cast<float>(t);
  for (int r = 0; r < 10; ++r) {
    __syncthreads();
    acc += s[(t + r + 1) % 256];
  }
  out[blockIdx.x * blockDim.x + t] = acc;
}

// __syncthreads_count/and/or and atomics.
__global__ void barrier_reduce_atomic_kernel(int* out, float* fsum, unsigned* umax) {
  const int t = threadIdx.x;
  const int c = __syncthreads_count(t % 4 == 0);
  const int a = __syncthreads_and(t >= 0);
  const int o = __syncthreads_or(t == 5);
  const int z = __syncthreads_or(0);
  if (t == 0) {
    out[blockIdx.x * 4 + 0] = c;
    out[blockIdx.x * 4 + 1] = a;
    out[blockIdx.x * 4 + 2] = o;
    out[blockIdx.x * 4 + 3] = z;
  }
  atomicAdd(fsum, 1.0f);
  atomicMax(reinterpret_cast<int*>(umax), t);
}

// cp.async: reading the destination before the wait must not see the data.
__global__ void cp_async_kernel(const float* __restrict__ src, float* early, float* mid, float* late) {
  AX_SHARED(float, s0, [64]);
  AX_SHARED(float, s1, [64]);
  const unsigned t = threadIdx.x;  // 16 threads, 4 floats each
  ax::cp_async_16(&s0[4 * t], src + 4 * t);
  ax::cp_async_commit();
  ax::cp_async_16(&s1[4 * t], src + 64 + 4 * t);
  ax::cp_async_commit();
  early[t] = s0[4 * t];  // before any wait: not yet copied
  ax::cp_async_wait<1>();  // group 0 done, group 1 may be pending
  __syncthreads();
  mid[2 * t] = s0[4 * ((t + 1) % 16)];
  mid[2 * t + 1] = s1[4 * t];
  ax::cp_async_wait<0>();
  __syncthreads();
  late[t] = s1[4 * ((t + 3) % 16)];
}

// cp.async with zero-fill for out-of-range sources (odd threads).
__global__ void cp_async_zfill_kernel(const float* __restrict__ src, float* out) {
  AX_SHARED(float, s, [32]);
  const unsigned t = threadIdx.x;  // 8 threads
  ax::cp_async_16_zfill(&s[4 * t], src + 4 * t, t % 2 == 0);
  ax::cp_async_commit();
  ax::cp_async_wait<0>();
  __syncthreads();
  for (int k = 0; k < 4; ++k) out[4 * t + k] = s[(4 * t + 4 + k) % 32];
}

// One warp: D = A * B + C via mma (fragments from global memory, packed per
// the PTX layout) and via ldmatrix from shared memory.
template <bool kBf16>
__global__ void mma_kernel(const uint32_t* a_frag, const uint32_t* b_frag, const float* c_frag, float* d_frag) {
  const unsigned lane = threadIdx.x;
  uint32_t a[4], b[2];
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) a[i] = a_frag[lane * 4 + i];
  for (int i = 0; i < 2; ++i) b[i] = b_frag[lane * 2 + i];
  for (int i = 0; i < 4; ++i) c[i] = c_frag[lane * 4 + i];
  if (kBf16)
    ax::mma_m16n8k16_bf16(d, a, b, c);
  else
    ax::mma_m16n8k16_f16(d, a, b, c);
  for (int i = 0; i < 4; ++i) d_frag[lane * 4 + i] = d[i];
}

// A: 16x16 row-major 16-bit, B: 16x16 (k x n) row-major 16-bit, both staged in
// shared memory; fragments loaded with ldmatrix (A: x4, B: x4.trans).
__global__ void ldmatrix_kernel(const uint16_t* A, const uint16_t* B, uint32_t* a_out, uint32_t* b_out) {
  AX_SHARED(uint16_t, sA, [16][16]);
  AX_SHARED(uint16_t, sB, [16][16]);
  const unsigned lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    sA[i / 16][i % 16] = A[i];
    sB[i / 16][i % 16] = B[i];
  }
  __syncwarp();
  uint32_t ra[4], rb[4];
  ax::ldmatrix_x4(ra, &sA[lane % 16][(lane / 16) * 8]);
  ax::ldmatrix_x4_trans(rb, &sB[lane % 16][(lane / 16) * 8]);
  for (int i = 0; i < 4; ++i) {
    a_out[lane * 4 + i] = ra[i];
    b_out[lane * 4 + i] = rb[i];
  }
}

// End-to-end tensor-core tile: D(16x16) = A(16x16) * B(16x16, k x n), both
// row-major bf16 in global memory, staged with cp.async, loaded with
// ldmatrix, multiplied with two m16n8k16 mmas. D is row-major fp32.
__global__ void ldmatrix_mma_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D) {
  AX_SHARED(__nv_bfloat16, sA, [16][16]);
  AX_SHARED(__nv_bfloat16, sB, [16][16]);
  const unsigned lane = threadIdx.x;
  // 16x16 bf16 = 512 bytes = 32 chunks of 16 bytes per matrix: one per lane.
  ax::cp_async_16(&sA[lane / 2][(lane % 2) * 8], A + lane * 8);
  ax::cp_async_16(&sB[lane / 2][(lane % 2) * 8], B + lane * 8);
  ax::cp_async_commit();
  ax::cp_async_wait_all();
  __syncwarp();
  uint32_t a[4], b[4];
  ax::ldmatrix_x4(a, &sA[lane % 16][(lane / 16) * 8]);
  ax::ldmatrix_x4_trans(b, &sB[lane % 16][(lane / 16) * 8]);
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};
  float d0[4], d1[4];
  ax::mma_m16n8k16_bf16(d0, a, b, zero);
  ax::mma_m16n8k16_bf16(d1, a, b + 2, zero);
  const unsigned g = lane >> 2, tq = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const unsigned row = g + (i >= 2 ? 8 : 0), col = tq * 2 + (i & 1);
    D[row * 16 + col] = d0[i];
    D[row * 16 + 8 + col] = d1[i];
  }
}

// Only half of the warp calls the mma (a bug).
__global__ void half_warp_mma_kernel(float* out) {
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float c[4] = {0, 0, 0, 0}, d[4];
  if (threadIdx.x % 32 < 16) ax::mma_m16n8k16_bf16(d, a, b, c);
  out[threadIdx.x] = 1.0f;
}

// Uses the fp16/bf16 conversions in device code.
__global__ void half_convert_kernel(const float* in, __half* h, __nv_bfloat16* b, float* back) {
  const unsigned t = threadIdx.x;
  h[t] = __float2half(in[t]);
  b[t] = __float2bfloat16(in[t]);
  back[2 * t] = __half2float(h[t]);
  back[2 * t + 1] = __bfloat162float(b[t]);
}

// Kernel with no parameters and one with by-value parameter modification.
__global__ void no_arg_kernel() {}

template <typename T, int kUnroll>
__global__ void axpy_kernel(const T* x, T* y, T alpha, int n) {
  int i = (blockIdx.x * blockDim.x + threadIdx.x) * kUnroll;
  for (int u = 0; u < kUnroll; ++u, ++i)
    if (i < n) y[i] = alpha * x[i] + y[i];
  n = 0;  // each thread owns its copy of the parameters
  alpha = T(0);
}

}  // namespace emu_test
