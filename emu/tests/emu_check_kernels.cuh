// Kernels with one planted memory bug each (and their correct twins), for the emulator's checked build
// (emu/tests/test_emu_checks.cpp) and the launch checks of every build (emu/tests/test_emu_core.cpp).
// Also compiled by nvcc (emu/tests/nvcc_compile_check.cu).
#pragma once

#include "emu/portability.cuh"

namespace emu_check {

// Every thread writes s[0] in one barrier interval (kBarrier: thread 0 alone writes, then a barrier).
template <bool kBarrier>
__global__ void shared_write_write_kernel(float* out) {
  AX_SHARED(float, s, [1]);
  if (!kBarrier || threadIdx.x == 0) s[0] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// Thread 0 overwrites s[0] while the others read it, with or without a barrier between.
template <bool kBarrier>
__global__ void shared_read_write_kernel(float* out) {
  AX_SHARED(float, s, [1]);
  if (threadIdx.x == 0) s[0] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[0];
  if (kBarrier) __syncthreads();
  if (threadIdx.x == 0) s[0] = 2.0f;
  __syncthreads();
  out[blockDim.x + threadIdx.x] = s[0];
}

// Lane 0 of each warp writes its slot, lane 1 reads it: racy unless the warp synchronises in between
// (mode 0: nothing, 1: __syncwarp, 2: a shuffle, 3: __syncwarp of a mask without lane 1).
template <int kMode>
__global__ void warp_sync_kernel(float* out) {
  AX_SHARED(float, s, [32]);
  const unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
  if (lane == 0) s[w] = 3.0f + w;
  if (kMode == 1) __syncwarp();
  if (kMode == 2) out[threadIdx.x] = __shfl_sync(0xffffffffu, float(lane), 0);
  if (kMode == 3 && lane != 1) __syncwarp(0xfffffffdu);
  if (lane == 1) out[blockDim.x + w] = s[w];
}

// Double-buffered cp.async of blocks of 4 floats per thread. kBug: 0 correct; 1 no cp_async_wait before
// the barrier (the reads touch copies in flight); 2 no barrier after the reads of a buffer before it is
// refilled (a refill races with slower threads' reads).
template <int kBug>
__global__ void cp_async_pipeline_kernel(const float* __restrict__ src, float* __restrict__ out, int steps) {
  AX_SHARED(float, buf, [2][128 * 4]);
  const int t = threadIdx.x;
  ax::cp_async_16(&buf[0][t * 4], src + t * 4);
  ax::cp_async_commit();
  float acc = 0.f;
  for (int s = 0; s < steps; ++s) {
    if (s + 1 < steps) ax::cp_async_16(&buf[(s + 1) & 1][t * 4], src + (s + 1) * 512 + t * 4);
    ax::cp_async_commit();
    if (kBug != 1) ax::cp_async_wait<1>();
    __syncthreads();
    acc += buf[s & 1][((t + 32) % 128) * 4];  // another warp's copy
    if (kBug != 2) __syncthreads();
  }
  ax::cp_async_wait<0>();
  out[t] = acc;
}

// Block b writes out[b] (kRace: every block also writes out[0]; kRead: block b reads out[b - 1]).
template <bool kRace, bool kRead>
__global__ void cta_kernel(float* out) {
  if (threadIdx.x != 0) return;
  const int b = blockIdx.x;
  float v = float(b);
  if (kRead && b > 0) v += out[b - 1];
  out[b] = v;
  if (kRace) out[0] = v;
}

// Reads in[i] for i < n (in: a device buffer, maybe never written), writes out[i].
__global__ void copy_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] + 1.0f;
}

// Writes out[i] for i <= n: one element past the end.
__global__ void off_by_one_kernel(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;
}

// Writes tile[idx] of an 8-float shared array.
// A 16-byte vector load from byte `offset` of in (aligned for a multiple of 16), and a 16-byte shared store at float
// `soff` of a shared array.
__global__ void vector_access_kernel(const float* in, float* out, int offset, int soff) {
  AX_SHARED(float4, buf4, [4]);
  float* buf = &buf4[0].x;
  const float4 v = *reinterpret_cast<const float4*>(reinterpret_cast<const char*>(in) + offset);
  *reinterpret_cast<float4*>(buf + soff) = v;
  __syncthreads();
  out[threadIdx.x] = buf[soff + threadIdx.x % 4];
}
__global__ void shared_oob_kernel(float* out, int idx) {
  AX_SHARED(float, tile, [8]);
  if (threadIdx.x == 0) tile[idx] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = tile[0];
}

constexpr int kBoundedThreads = 64;
__global__ void __launch_bounds__(kBoundedThreads) bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }

// Uses all its dynamic shared memory (bytes / 4 floats).
__global__ void big_smem_kernel(float* out, int n_floats) {
  AX_DYNAMIC_SHARED(float, buf);
  for (int i = threadIdx.x; i < n_floats; i += blockDim.x) buf[i] = float(i);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = buf[n_floats - 1];
}

// Memory-metric patterns of one warp: shared reads of stride `stride` floats, 16-byte shared reads,
// global reads of stride `stride` floats.
__global__ void metrics_kernel(const float* __restrict__ g, float* out, int stride) {
  AX_SHARED(float, s, [32 * 32 + 4 * 32]);
  const int lane = threadIdx.x;
  for (int i = lane; i < 32 * 32 + 4 * 32; i += 32) s[i] = float(i);
  __syncthreads();
  float acc = s[(lane * stride) % (32 * 32)];
  const float4 v = *reinterpret_cast<const float4*>(&s[lane * 4]);
  acc += v.x + v.y + v.z + v.w;
  acc += g[lane * stride];
  out[lane] = acc;
}

}  // namespace emu_check
