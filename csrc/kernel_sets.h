// The kernel sets as the torch glue (csrc/glue.h) sees them, and the one function that picks the set for a call.
//
// A kernel set K provides:
//   using Guard = ...;                                     a device guard, constructible from an at::Device
//   static void* stream(const at::Tensor&);                the stream its kernels run on
//   static at::Tensor empty(sizes, options);               an output or workspace its kernels write
//   static constexpr bool has_fused_projection;            project_forward exists (csrc/kernels/project.cuh)
//   static bool fuse_rows(int64_t n);                      whether the fused projection is worth it for n rows
//   static core_forward / core_backward / cayley_forward / cayley_backward [/ project_forward]   (api.h)
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

#include "csrc/kernels/api.h"

#if AX_WITH_CUDA
#include "csrc/cuda/kernel_set.h"
#endif

namespace ax {

struct CpuGuard {
  explicit CpuGuard(const at::Device& d) {
    TORCH_CHECK(d.is_cpu(), "antipasto_ext: the CPU kernels run CPU tensors, got a tensor on ", d);
  }
};

// The C++ CPU kernels (csrc/cpu/kernels.cpp): no fused projection (the CPU BLAS GEMM, then the core).
struct CpuKernels {
  using Guard = CpuGuard;
  static void* stream(const at::Tensor&) { return nullptr; }
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }
  static constexpr bool has_fused_projection = false;
  static bool fuse_rows(int64_t) { return false; }
  static void core_forward(const CoreCall& c, void* s) { cpu_impl::core_forward(c, s); }
  static void core_backward(const CoreCall& c, void* s) { cpu_impl::core_backward(c, s); }
  static void cayley_forward(const CayleyCall& c, void* s) { cpu_impl::cayley_forward(c, s); }
  static void cayley_backward(const CayleyCall& c, void* s) { cpu_impl::cayley_backward(c, s); }
};

#if AX_WITH_EMULATION
// The CUDA kernel source run through the CPU emulation (csrc/emulated/kernels.cpp), on an emulated op stream.
// Outputs and workspaces are emulated device buffers between guard zones: a kernel that writes past one fails
// at its launch (the emulator checks the zones after every launch), not later in an unrelated free. The
// emulator exists to run the kernel source: the fused projection wherever it takes the shape.
struct EmulatedKernels {
  using Guard = CpuGuard;
  static void* stream(const at::Tensor&) { return emu_impl::op_stream(); }
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const int64_t bytes = c10::multiply_integers(sizes) * int64_t(options.dtype().itemsize());
    void* p = emu_impl::device_malloc(size_t(bytes));
    return at::from_blob(p, sizes, [](void* q) { emu_impl::device_free(q); }, options);
  }
  static constexpr bool has_fused_projection = true;
  static bool fuse_rows(int64_t) { return true; }
  static void core_forward(const CoreCall& c, void* s) { emu_impl::core_forward(c, s); }
  static void core_backward(const CoreCall& c, void* s) { emu_impl::core_backward(c, s); }
  static void cayley_forward(const CayleyCall& c, void* s) { emu_impl::cayley_forward(c, s); }
  static void cayley_backward(const CayleyCall& c, void* s) { emu_impl::cayley_backward(c, s); }
  static void project_forward(const ProjectCall& c, void* s) { emu_impl::project_forward(c, s); }
};
#endif

// The engine of CPU tensors, from ANTIPASTO_EXT_ENGINE (read on every call): unset, empty or "native": the C++
// CPU kernels; "cuda-emulated": the CUDA kernel source through the CPU emulation. Anything else is an error.
inline bool use_emulated_engine() {
  const char* v = std::getenv("ANTIPASTO_EXT_ENGINE");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "native") == 0) return false;
  TORCH_CHECK(std::strcmp(v, "cuda-emulated") == 0, "antipasto_ext: ANTIPASTO_EXT_ENGINE must be 'native' or ",
              "'cuda-emulated', got '", v, "'");
  TORCH_CHECK(AX_WITH_EMULATION, "antipasto_ext: ANTIPASTO_EXT_ENGINE=cuda-emulated, but this build of ",
              "antipasto_ext has no CUDA emulation engine (it is built only where the CUDA headers cuda_bf16.h / ",
              "cuda_fp16.h are found; see antipasto_ext.build_info()['emulation'])");
  return true;
}

// The decode path of the fused projection, from ANTIPASTO_EXT_DECODE_PATH (read on every call, so a benchmark can
// time both paths in one process): unset, empty or "model": the faster by the decode model (api.h); "split": the K
// splits and the finish; "one-kernel": the one-kernel decode wherever the call fits it (api.h project_gemv_fits).
inline DecodePath decode_path_setting() {
  const char* v = std::getenv("ANTIPASTO_EXT_DECODE_PATH");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "model") == 0) return DecodePath::model;
  if (std::strcmp(v, "split") == 0) return DecodePath::split;
  TORCH_CHECK(std::strcmp(v, "one-kernel") == 0, "antipasto_ext: ANTIPASTO_EXT_DECODE_PATH must be 'model', 'split' ",
              "or 'one-kernel', got '", v, "'");
  return DecodePath::gemv;
}

// Calls fn(K{}) with the kernel set for tensors on `device`: CUDA tensors run the CUDA kernels, CPU tensors the
// C++ CPU kernels or, with ANTIPASTO_EXT_ENGINE=cuda-emulated, the CUDA kernel source through the emulator.
template <class Fn>
decltype(auto) with_kernel_set(const at::Device& device, Fn&& fn) {
#if AX_WITH_CUDA
  if (device.is_cuda()) return fn(CudaKernels{});
#endif
  TORCH_CHECK(device.is_cpu(), "antipasto_ext: no kernels for tensors on ", device,
              device.is_cuda() ? " (this build has no CUDA kernels; see antipasto_ext.build_info())" : "");
#if AX_WITH_EMULATION
  if (use_emulated_engine()) return fn(EmulatedKernels{});
#else
  use_emulated_engine();  // an unknown engine name, or cuda-emulated without the engine: the error says why
#endif
  return fn(CpuKernels{});
}

}  // namespace ax
