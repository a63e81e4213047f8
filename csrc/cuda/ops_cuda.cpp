// CUDA implementations of the registered ops (schemas in csrc/registration.cpp): the torch glue of
// csrc/kernel_ops.h over the kernels of namespace ax::cuda_impl (csrc/cuda/kernels.cu), launched on
// the current CUDA stream of the tensors' device. No host synchronisation anywhere.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "csrc/kernel_ops.h"
#include "csrc/layer_ops.h"

namespace ax {
namespace {

struct CudaKernels {
  using Guard = c10::cuda::OptionalCUDAGuard;
  static void* stream(const at::Tensor& t) {
    TORCH_CHECK(t.is_cuda(), "antipasto_ext: expected a CUDA tensor, got one on ", t.device());
    return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
  }
  // The fused projection kernel for n rows: up to ANTIPASTO_EXT_FUSED_PROJECTION_ROWS (read per call, so
  // the benchmark can time both paths in one process; default 16, 0 turns it off), else cuBLAS + the
  // core kernel. Why 16, a model until a GPU run measures it: the kernel's tile is 32 rows x all r
  // columns on one CTA of 4 warps (mma.sync), so it fills the GPU only through split-K, which it uses
  // for n <= 16; past that cuBLAS's large tiles win. benchmarks/cost_report.py --device cuda times both
  // paths per row count ("Dispatch of the projection") and prints the crossover to set here.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }
  static constexpr bool has_fused_kernel = true;
  static bool fuse_rows(int64_t n) {
    const char* v = std::getenv("ANTIPASTO_EXT_FUSED_PROJECTION_ROWS");
    return n <= (v && *v ? std::strtoll(v, nullptr, 10) : int64_t(16));
  }
  AX_KERNEL_BACKEND_FUNCTIONS(::ax::cuda_impl)
};
using K = CudaKernels;

}  // namespace

TORCH_LIBRARY_IMPL(antipasto_ext, CUDA, m) {
  m.impl("block_cayley", &glue::block_cayley<K>);
  m.impl("block_cayley_backward", &glue::block_cayley_backward<K>);
  m.impl("gain_core", &glue::gain_core<K>);
  m.impl("gain_core_backward", &glue::gain_core_backward<K>);
  m.impl("dplr_core", &glue::dplr_core<K>);
  m.impl("dplr_core_backward", &glue::dplr_core_backward<K>);
  m.impl("rot_core", &glue::rot_core<K>);
  m.impl("rot_core_backward", &glue::rot_core_backward<K>);
  m.impl("ablate_core", &glue::ablate_core<K>);
  m.impl("ablate_core_backward", &glue::ablate_core_backward<K>);
  m.impl("layer_gain", &project::layer_gain<K>);
  m.impl("layer_rot", &project::layer_rot<K>);
  m.impl("layer_dplr", &project::layer_dplr<K>);
  m.impl("layer_ablate", &project::layer_ablate<K>);
}

}  // namespace ax
