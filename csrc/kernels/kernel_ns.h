// Backend namespace of the kernel source. The same kernel headers are compiled twice into one
// library: by nvcc (real CUDA kernels, namespace ax::cuda_impl) and by the host compiler with
// AX_EMULATE_CUDA (the CPU emulation, namespace ax::emu_impl). Under nvcc a __global__ template
// also gets a host stub with the kernel's mangled name, so the two builds must never share a
// namespace, or the linker would merge an emulated kernel with a CUDA launch stub.
#pragma once

#include <cstddef>

#include "emu/portability.cuh"

#ifndef AX_KERNEL_NS
#if AX_EMULATION
#define AX_KERNEL_NS emu_impl
#else
#define AX_KERNEL_NS cuda_impl
#endif
#endif

namespace ax {
namespace AX_KERNEL_NS {
namespace kern {

// Dynamic shared memory every kernel gets without an opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize): the
// budget the launchers size tiles and staging to.
constexpr size_t kSmemBudget = 48 * 1024;

// Dynamic shared memory as T* (portability.cuh declares one extern byte array for every kernel).
template <typename T>
__device__ __forceinline__ T* dyn_smem() {
  AX_DYNAMIC_SHARED(T, ax_smem_typed);
  return ax_smem_typed;
}

}  // namespace kern
}  // namespace AX_KERNEL_NS
}  // namespace ax
