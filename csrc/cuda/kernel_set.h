// The CUDA kernel set (ax::cuda_impl, csrc/cuda/kernels.cu) as the torch glue sees it (csrc/kernel_sets.h): kernels
// launched on the current CUDA stream of the tensors' device, outputs from the caching allocator.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>

#include "csrc/kernels/api.h"

namespace ax {

struct CudaKernels {
  using Guard = c10::cuda::OptionalCUDAGuard;
  static void* stream(const at::Tensor& t) {
    TORCH_CHECK(t.is_cuda(), "antipasto_ext: expected a CUDA tensor, got one on ", t.device());
    return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
  }
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }
  // The fused projection kernel for n rows: up to ANTIPASTO_EXT_FUSED_PROJECTION_ROWS (read per call, so the
  // benchmark can time both paths in one process; default 16, 0 turns it off), else cuBLAS + the core kernel.
  // Why 16, a model until a GPU run measures it: up to 16 rows the decode kernels read Vh once over at least 132
  // CTAs with all of it in flight and keep P in fp32 in the workspace, the bytes of cuBLAS's GEMV without its P
  // round trip through the core kernel; past 16 rows the fused tile (32 rows x all r columns, 4 warps of mma.sync,
  // each CTA reading all of Vh) is far below cuBLAS's wgmma tiles. benchmarks/cost_report.py --device cuda times both paths per row count ("Dispatch of the
  // projection") and prints the crossover to set here.
  static constexpr bool has_fused_projection = true;
  static bool fuse_rows(int64_t n) {
    const char* v = std::getenv("ANTIPASTO_EXT_FUSED_PROJECTION_ROWS");
    return n <= (v && *v ? std::strtoll(v, nullptr, 10) : int64_t(16));
  }
  static void core_forward(const CoreCall& c, void* s) { cuda_impl::core_forward(c, s); }
  static void core_backward(const CoreCall& c, void* s) { cuda_impl::core_backward(c, s); }
  static void cayley_forward(const CayleyCall& c, void* s) { cuda_impl::cayley_forward(c, s); }
  static void cayley_backward(const CayleyCall& c, void* s) { cuda_impl::cayley_backward(c, s); }
  static void project_forward(const ProjectCall& c, void* s) { cuda_impl::project_forward(c, s); }
};

}  // namespace ax
