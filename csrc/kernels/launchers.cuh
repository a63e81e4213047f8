// The CUDA kernel set: the kernel API of csrc/kernels/api.h in namespace ax::AX_KERNEL_NS (cuda_impl under
// nvcc, emu_impl under the CPU emulation). Include exactly once per kernel set, from csrc/cuda/kernels.cu or
// csrc/emulated/kernels.cpp; a test of one kernel family may include its launch_*.cuh alone. Torch-free.
#pragma once

#include "csrc/kernels/launch_cayley.cuh"
#include "csrc/kernels/launch_cores.cuh"
#include "csrc/kernels/launch_project.cuh"

namespace ax {
namespace AX_KERNEL_NS {

const char* kernel_set_name() { return AX_EMULATION ? "cuda-emulated" : "cuda"; }

}  // namespace AX_KERNEL_NS
}  // namespace ax
