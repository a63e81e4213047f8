// portability.cuh - the ONLY header kernels include for CUDA-isms.
//
//  * nvcc (__CUDACC__): maps the portable names onto real CUDA.
//  * host compiler with AX_EMULATE_CUDA: CPU emulation (emu/cuda_emu.h).
//
// Kernel-side names (valid in both modes):
//   __global__ __device__ __host__ __forceinline__ __restrict__
//   AX_HD (= __host__ __device__), AX_DEVICE (= __device__ __forceinline__)
//   threadIdx blockIdx blockDim gridDim warpSize
//   AX_SHARED(T, name, dims)      e.g. AX_SHARED(float, tile, [32][33]);
//   AX_DYNAMIC_SHARED(T, name)    e.g. AX_DYNAMIC_SHARED(float, buf);
//   __syncthreads __syncthreads_count/_and/_or __syncwarp
//   __shfl_sync __shfl_xor_sync __shfl_down_sync __shfl_up_sync
//   __ballot_sync __any_sync __all_sync
//   atomicAdd atomicMax ... __threadfence __ldg, __half / __nv_bfloat16
//   ax::cp_async_16 / cp_async_16_zfill / cp_async_commit / cp_async_wait<N> / cp_async_wait_all
//   ax::st_shared_v4   a 16-byte shared-memory store of a float4
//   ax::mma_m16n8k16_bf16 / ax::mma_m16n8k16_f16 / ax::ldmatrix_x4 / ax::ldmatrix_x4_trans
// Host-side:
//   AX_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)   (wrap template kernels in parentheses)
//   AX_CHECK_LAUNCH()   ax::stream_t   AX_EMULATION (1 in emulation, 0 under nvcc)
//   ax::set_max_dynamic_smem(kernel, bytes)   opt-in to dynamic shared memory above 48 KiB
//   ax::poison_output(ptr, bytes)   a launch output / workspace: emulation fills it with 0xFF (NaN) and
//                                   marks it uninitialised, so an entry no kernel writes shows; no-op on a GPU
#pragma once

#if defined(__CUDACC__)

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#define AX_EMULATION 0

#define AX_HD __host__ __device__
#define AX_DEVICE __device__ __forceinline__

#define AX_SHARED(T, name, dims) __shared__ __align__(16) T name dims
#define AX_DYNAMIC_SHARED(T, name)                         \
  extern __shared__ __align__(16) unsigned char ax_dyn_smem[]; \
  T* name = reinterpret_cast<T*>(ax_dyn_smem)

#define AX_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__)

#define AX_CHECK_LAUNCH()                                                                    \
  do {                                                                                       \
    cudaError_t ax_err_ = cudaGetLastError();                                                \
    if (ax_err_ != cudaSuccess)                                                              \
      throw std::runtime_error(std::string("CUDA kernel launch failed: ") +                  \
                               cudaGetErrorString(ax_err_) + " at " + __FILE__ + ":" +       \
                               std::to_string(__LINE__));                                    \
  } while (0)

namespace ax {

using stream_t = cudaStream_t;

template <class... P>
void set_max_dynamic_smem(void (*kernel)(P...), size_t bytes) {
  const cudaError_t e =
      cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("cudaFuncSetAttribute(MaxDynamicSharedMemorySize) failed: ") +
                             cudaGetErrorString(e));
}
inline void poison_output(void*, size_t) {}

__device__ __forceinline__ uint32_t smem_u32addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One 16-byte shared store (st.shared.v4.f32); dst must be 16-byte aligned. nvcc 13 splits a plain float4 store
// into four 4-byte ones behind some computed shared offsets (a tile placed after a `stage ? n : 0` offset).
__device__ __forceinline__ void st_shared_v4(float* dst, float4 v) {
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_u32addr(dst)), "f"(v.x), "f"(v.y), "f"(v.z),
               "f"(v.w)
               : "memory");
}

// 16-byte async copy global -> shared (cp.async.cg, sm_80+; plain copy below sm_80).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32addr(smem_dst)), "l"(gmem_src)
               : "memory");
#else
  *reinterpret_cast<uint4*>(smem_dst) = *reinterpret_cast<const uint4*>(gmem_src);
#endif
}

// Same; when !valid the destination is zero-filled and gmem_src is not read.
__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32addr(smem_dst)), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
#else
  if (valid)
    *reinterpret_cast<uint4*>(smem_dst) = *reinterpret_cast<const uint4*>(gmem_src);
  else
    *reinterpret_cast<uint4*>(smem_dst) = make_uint4(0u, 0u, 0u, 0u);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N committed groups are still pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait<N>: N must be >= 0");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// D = A * B + C, m16n8k16, A row-major bf16, B column-major bf16, fp32 accumulate.
// Warp-collective: all 32 lanes must call it. Fragment layout: PTX ISA
// "Matrix Fragments for mma.m16n8k16 with floating point type".
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  __trap();  // requires sm_80+
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  __trap();  // requires sm_80+
#endif
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16. Warp-collective; lane l
// passes the (16-byte aligned) shared address of row (l % 8) of matrix (l / 8).
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32addr(smem_row_ptr)));
#elif defined(__CUDA_ARCH__)
  __trap();  // requires sm_75+
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32addr(smem_row_ptr)));
#elif defined(__CUDA_ARCH__)
  __trap();  // requires sm_75+
#endif
}

}  // namespace ax

#elif defined(AX_EMULATE_CUDA)

#include "emu/cuda_emu.h"

#define AX_EMULATION 1

#define AX_HD __host__ __device__
#define AX_DEVICE __device__ __forceinline__

// AX_SHARED / AX_DYNAMIC_SHARED are defined by cuda_emu.h.

// Launches run synchronously; the stream must be the host thread's current one (ax_emu::set_current_stream).
#define AX_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                              \
  (::ax_emu::detail::make_launch(#kernel, __FILE__, __LINE__, kernel, dim3(grid), dim3(block),               \
                                 static_cast<size_t>(smem_bytes), static_cast<const void*>(stream))(__VA_ARGS__))

#define AX_CHECK_LAUNCH() \
  do {                    \
  } while (0)

namespace ax {
template <class... P>
void set_max_dynamic_smem(void (*kernel)(P...), size_t bytes) {
  ::ax_emu::set_max_dynamic_smem(kernel, bytes);
}
inline void poison_output(void* p, size_t bytes) { ::ax_emu::poison(p, bytes); }
}  // namespace ax

#else
#error "portability.cuh: compile with nvcc, or define AX_EMULATE_CUDA for the CPU emulation"
#endif
