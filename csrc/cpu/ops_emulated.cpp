// The CPU ops run through the CUDA kernel source on the CPU emulation of the CUDA execution model
// (ANTIPASTO_EXT_ENGINE=cuda-emulated, see ax::use_emulated_engine in csrc/ops.h): the torch glue
// of csrc/kernel_ops.h over the kernels of namespace ax::emu_impl (csrc/emulated/kernels.cpp). Built in
// every configuration; without the emulation engine (AX_WITH_EMULATION=0) the entry points raise.
#include "csrc/ops.h"

#if AX_WITH_EMULATION
#include "csrc/kernel_ops.h"
#include "csrc/layer_ops.h"
#endif

namespace ax {
namespace emulated {

#if AX_WITH_EMULATION

namespace {
struct NoGuard {
  explicit NoGuard(const at::Device& d) {
    TORCH_CHECK(d.is_cpu(), "antipasto_ext: the cuda-emulated engine runs CPU tensors, got a tensor on ", d);
  }
};
// Kernels of ax::emu_impl on host memory; launches run synchronously on the emulated op stream.
struct EmulatedKernels {
  using Guard = NoGuard;
  static void* stream(const at::Tensor&) { return ::ax::emu_impl::op_stream(); }
  // Outputs and workspaces are emulated device buffers between guard zones: a kernel that writes past one
  // fails at its launch (the emulator checks the zones after every launch), not later in an unrelated free.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const int64_t bytes = c10::multiply_integers(sizes) * int64_t(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
    void* p = ::ax::emu_impl::device_malloc(size_t(bytes));
    return at::from_blob(p, sizes, [](void* q) { ::ax::emu_impl::device_free(q); }, options);
  }
  // The emulator exists to run the kernel source: the fused projection whenever it takes the shape.
  static constexpr bool has_fused_kernel = true;
  static bool fuse_rows(int64_t) { return true; }
  AX_KERNEL_BACKEND_FUNCTIONS(::ax::emu_impl)
};
using K = EmulatedKernels;
}  // namespace

at::Tensor block_cayley(const at::Tensor& rot_T, int64_t block_size, double max_angle, double coeff) {
  return glue::block_cayley<K>(rot_T, block_size, max_angle, coeff);
}
at::Tensor block_cayley_backward(const at::Tensor& grad_R, const at::Tensor& R, const at::Tensor& rot_T,
                                 int64_t block_size, double max_angle, double coeff) {
  return glue::block_cayley_backward<K>(grad_R, R, rot_T, block_size, max_angle, coeff);
}
at::Tensor gain_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, double coeff, bool suppress_only) {
  return glue::gain_core<K>(p, S, g, coeff, suppress_only);
}
std::tuple<at::Tensor, at::Tensor> gain_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                      const at::Tensor& S, const at::Tensor& g, double coeff,
                                                      bool suppress_only) {
  return glue::gain_core_backward<K>(grad_h, p, S, g, coeff, suppress_only);
}
at::Tensor dplr_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
                     const at::Tensor& B, double coeff, bool suppress_only) {
  return glue::dplr_core<K>(p, S, g, A, B, coeff, suppress_only);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dplr_core_backward(
    const at::Tensor& grad_h, const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
    const at::Tensor& B, double coeff, bool suppress_only) {
  return glue::dplr_core_backward<K>(grad_h, p, S, g, A, B, coeff, suppress_only);
}
at::Tensor rot_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& delta_s, const at::Tensor& R,
                    double coeff, int64_t side) {
  return glue::rot_core<K>(p, S, delta_s, R, coeff, side);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> rot_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                                 const at::Tensor& S, const at::Tensor& delta_s,
                                                                 const at::Tensor& R, double coeff, int64_t side) {
  return glue::rot_core_backward<K>(grad_h, p, S, delta_s, R, coeff, side);
}
at::Tensor ablate_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& C, const at::Tensor& a,
                       double coeff) {
  return glue::ablate_core<K>(p, S, C, a, coeff);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> ablate_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                                    const at::Tensor& S, const at::Tensor& C,
                                                                    const at::Tensor& a, double coeff) {
  return glue::ablate_core_backward<K>(grad_h, p, S, C, a, coeff);
}
std::tuple<at::Tensor, at::Tensor> layer_gain(const at::Tensor& x, const at::Tensor& W,
                                              const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                              const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& g,
                                              double coeff, bool suppress_only, bool need_p) {
  return project::layer_gain<K>(x, W, bias, U, Vh, S, g, coeff, suppress_only, need_p);
}
std::tuple<at::Tensor, at::Tensor> layer_rot(const at::Tensor& x, const at::Tensor& W,
                                             const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                             const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& delta_s,
                                             const at::Tensor& R, double coeff, int64_t side, bool need_p) {
  return project::layer_rot<K>(x, W, bias, U, Vh, S, delta_s, R, coeff, side, need_p);
}
std::tuple<at::Tensor, at::Tensor> layer_dplr(const at::Tensor& x, const at::Tensor& W,
                                              const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                              const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& g,
                                              const at::Tensor& A, const at::Tensor& B, double coeff,
                                              bool suppress_only, bool need_p) {
  return project::layer_dplr<K>(x, W, bias, U, Vh, S, g, A, B, coeff, suppress_only, need_p);
}
std::tuple<at::Tensor, at::Tensor> layer_ablate(const at::Tensor& x, const at::Tensor& W,
                                                const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                                const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& C,
                                                const at::Tensor& a, double coeff, bool need_p) {
  return project::layer_ablate<K>(x, W, bias, U, Vh, S, C, a, coeff, need_p);
}

#else  // no emulation engine in this build

namespace {
[[noreturn]] void unavailable() {
  TORCH_CHECK(false, "antipasto_ext: this build has no CUDA emulation engine (ANTIPASTO_EXT_ENGINE=cuda-emulated)");
}
}  // namespace

at::Tensor block_cayley(const at::Tensor&, int64_t, double, double) { unavailable(); }
at::Tensor block_cayley_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double, double) {
  unavailable();
}
at::Tensor gain_core(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool) { unavailable(); }
std::tuple<at::Tensor, at::Tensor> gain_core_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, double, bool) {
  unavailable();
}
at::Tensor dplr_core(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                     double, bool) {
  unavailable();
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dplr_core_backward(const at::Tensor&, const at::Tensor&,
                                                                              const at::Tensor&, const at::Tensor&,
                                                                              const at::Tensor&, const at::Tensor&,
                                                                              double, bool) {
  unavailable();
}
at::Tensor rot_core(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t) {
  unavailable();
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> rot_core_backward(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double, int64_t) {
  unavailable();
}
at::Tensor ablate_core(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double) {
  unavailable();
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> ablate_core_backward(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, double) {
  unavailable();
}

std::tuple<at::Tensor, at::Tensor> layer_gain(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                              const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, double, bool, bool) {
  unavailable();
}
std::tuple<at::Tensor, at::Tensor> layer_rot(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, const at::Tensor&, double, int64_t, bool) {
  unavailable();
}
std::tuple<at::Tensor, at::Tensor> layer_dplr(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                              const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool,
                                              bool) {
  unavailable();
}
std::tuple<at::Tensor, at::Tensor> layer_ablate(const at::Tensor&, const at::Tensor&,
                                                const c10::optional<at::Tensor>&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, double, bool) {
  unavailable();
}

#endif

}  // namespace emulated
}  // namespace ax
