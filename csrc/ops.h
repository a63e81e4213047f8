// Argument checks and small parameter transforms shared by the CPU and CUDA op implementations.
// Every check names the offending argument, so bad input from Python surfaces as a clear error.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <tuple>
#include <vector>

#include "csrc/kernels/math.h"
#include "csrc/kernels/rowcore.h"

#ifndef AX_WITH_EMULATION
#define AX_WITH_EMULATION 0
#endif

namespace ax {

// Float64 inputs accumulate in double, every other float dtype in float.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline double cayley_a_lim(double max_angle) { return 2.0 * std::tan(max_angle / 2.0); }

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "antipasto_ext: ", name, " must be a floating tensor, got ",
              t.scalar_type());
}

inline void check_block_cayley_args(const at::Tensor& rot_T, int64_t block_size, double max_angle) {
  TORCH_CHECK(block_size >= 2 && block_size <= kMaxCayleyBlock, "antipasto_ext: block_size must be in 2..",
              kMaxCayleyBlock, ", got ", block_size);
  check_float(rot_T, "rot_T");
  TORCH_CHECK(rot_T.dim() == 2 && rot_T.size(1) == block_size * (block_size - 1) / 2,
              "antipasto_ext: rot_T must have shape (n_blocks, block_size*(block_size-1)/2) = (n, ",
              block_size * (block_size - 1) / 2, "), got ", rot_T.sizes());
  TORCH_CHECK(max_angle > 0.0 && max_angle < M_PI, "antipasto_ext: max_angle must be in (0, pi), got ", max_angle);
}

struct NamedShape {
  const char* name;
  const at::Tensor& tensor;
  at::IntArrayRef shape;
};

// S (r,), then each named tensor against its expected shape, all on `device`.
inline void check_params(const at::Tensor& S, const at::Device& device, std::initializer_list<NamedShape> others) {
  check_float(S, "S");
  TORCH_CHECK(S.dim() == 1 && S.size(0) > 0, "antipasto_ext: S must be a non-empty 1-D tensor, got ", S.sizes());
  TORCH_CHECK(S.device() == device, "antipasto_ext: S is on ", S.device(), " but the activations are on ", device);
  for (const auto& o : others) {
    check_float(o.tensor, o.name);
    TORCH_CHECK(o.tensor.sizes() == o.shape, "antipasto_ext: ", o.name, " must have shape ", o.shape, ", got ",
                o.tensor.sizes());
    TORCH_CHECK(o.tensor.device() == device, "antipasto_ext: ", o.name, " is on ", o.tensor.device(),
                " but the activations are on ", device);
  }
}

// p (..., r) and S (r,), then each named tensor against its expected shape, all on p's device.
inline void check_core_args(const at::Tensor& p, const at::Tensor& S, std::initializer_list<NamedShape> others) {
  check_float(p, "p");
  check_params(S, p.device(), others);
  TORCH_CHECK(p.dim() >= 1 && p.size(-1) == S.size(0), "antipasto_ext: p must have last dim r = ", S.size(0),
              ", got ", p.sizes());
}

// The projection ops' activations: x (n, d_in) and the input basis Vh (r, d_in), one dtype and device.
inline void check_project_args(const at::Tensor& x, const at::Tensor& Vh, const at::Tensor& S) {
  check_float(x, "x");
  check_float(Vh, "Vh");
  check_float(S, "S");
  TORCH_CHECK(x.dim() == 2, "antipasto_ext: x must be 2-D (tokens, d_in), got ", x.sizes());
  TORCH_CHECK(S.dim() == 1 && Vh.dim() == 2 && Vh.size(0) == S.size(0) && Vh.size(1) == x.size(1),
              "antipasto_ext: Vh must have shape (r, d_in) = (", S.dim() == 1 ? S.size(0) : -1, ", ", x.size(1),
              "), got ", Vh.sizes());
  TORCH_CHECK(Vh.scalar_type() == x.scalar_type(), "antipasto_ext: Vh has dtype ", Vh.scalar_type(), " but x has ",
              x.scalar_type());
  TORCH_CHECK(Vh.device() == x.device(), "antipasto_ext: Vh is on ", Vh.device(), " but x is on ", x.device());
}

inline void check_rot_params(const at::Tensor& S, const at::Tensor& delta_s, const at::Tensor& R, int64_t side,
                             const at::Device& device) {
  TORCH_CHECK(side == kRotNone || side == kRotV || side == kRotU,
              "antipasto_ext: side must be 0 (none), 1 (V) or 2 (U), got ", side);
  check_params(S, device, {{"delta_s", delta_s, {S.size(0)}}});
  if (side == kRotNone) return;
  check_float(R, "R");
  TORCH_CHECK(R.dim() == 3 && R.size(1) == R.size(2) && R.size(1) >= 2 && R.size(0) * R.size(1) == S.size(0),
              "antipasto_ext: R must have shape (r / block_size, block_size, block_size) with r = ", S.size(0),
              ", got ", R.sizes());
  TORCH_CHECK(R.device() == device, "antipasto_ext: R is on ", R.device(), " but the activations are on ", device);
}

inline void check_rot_args(const at::Tensor& p, const at::Tensor& S, const at::Tensor& delta_s, const at::Tensor& R,
                           int64_t side) {
  check_core_args(p, S, {});
  check_rot_params(S, delta_s, R, side, p.device());
}

// s_eff = S * (1 + ELU(coeff * g')) and, when asked, d s_eff / d g, in the accumulation type.
template <typename acc_t>
std::vector<acc_t> gain_scales(const at::Tensor& S, const at::Tensor& g, double coeff, bool suppress_only,
                               std::vector<acc_t>* dscale_dg) {
  const auto acc = std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat;
  const at::Tensor Sa = S.to(at::kCPU).to(acc).contiguous(), ga = g.to(at::kCPU).to(acc).contiguous();
  const int64_t r = Sa.numel();
  std::vector<acc_t> s(r);
  if (dscale_dg) dscale_dg->resize(r);
  for (int64_t j = 0; j < r; ++j)
    s[j] = gain_scale<acc_t>(Sa.data_ptr<acc_t>()[j], ga.data_ptr<acc_t>()[j], acc_t(coeff), suppress_only,
                             dscale_dg ? dscale_dg->data() + j : nullptr);
  return s;
}

// s_eff = S + coeff * delta_s (antipasto_rot).
template <typename acc_t>
std::vector<acc_t> additive_scales(const at::Tensor& S, const at::Tensor& delta_s, double coeff) {
  const auto acc = std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat;
  const at::Tensor Sa = S.to(at::kCPU).to(acc).contiguous(), da = delta_s.to(at::kCPU).to(acc).contiguous();
  std::vector<acc_t> s(Sa.numel());
  for (int64_t j = 0; j < Sa.numel(); ++j) s[j] = Sa.data_ptr<acc_t>()[j] + acc_t(coeff) * da.data_ptr<acc_t>()[j];
  return s;
}

// Engine of the CPU ops, from the environment variable ANTIPASTO_EXT_ENGINE (read on every call):
// unset, empty or "native": the C++ CPU kernels; "cuda-emulated": the CUDA kernel source run through
// the CPU emulation of the CUDA execution model (csrc/cpu/ops_emulated.cpp). Anything else is an error.
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

// The CPU ops run through the emulated CUDA kernels: same signatures and results as the C++ CPU ops.
namespace emulated {
at::Tensor block_cayley(const at::Tensor& rot_T, int64_t block_size, double max_angle, double coeff);
at::Tensor block_cayley_backward(const at::Tensor& grad_R, const at::Tensor& R, const at::Tensor& rot_T,
                                 int64_t block_size, double max_angle, double coeff);
at::Tensor gain_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, double coeff, bool suppress_only);
std::tuple<at::Tensor, at::Tensor> gain_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                      const at::Tensor& S, const at::Tensor& g, double coeff,
                                                      bool suppress_only);
at::Tensor dplr_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
                     const at::Tensor& B, double coeff, bool suppress_only);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dplr_core_backward(
    const at::Tensor& grad_h, const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
    const at::Tensor& B, double coeff, bool suppress_only);
at::Tensor rot_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& delta_s, const at::Tensor& R,
                    double coeff, int64_t side);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rot_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                                 const at::Tensor& S, const at::Tensor& delta_s,
                                                                 const at::Tensor& R, double coeff, int64_t side);
at::Tensor ablate_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& C, const at::Tensor& a,
                       double coeff);
std::tuple<at::Tensor, at::Tensor, at::Tensor> ablate_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                                    const at::Tensor& S, const at::Tensor& C,
                                                                    const at::Tensor& a, double coeff);
std::tuple<at::Tensor, at::Tensor> layer_gain(const at::Tensor& x, const at::Tensor& W,
                                              const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                              const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& g,
                                              double coeff, bool suppress_only, bool need_p);
std::tuple<at::Tensor, at::Tensor> layer_rot(const at::Tensor& x, const at::Tensor& W,
                                             const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                             const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& delta_s,
                                             const at::Tensor& R, double coeff, int64_t side, bool need_p);
std::tuple<at::Tensor, at::Tensor> layer_dplr(const at::Tensor& x, const at::Tensor& W,
                                              const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                              const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& g,
                                              const at::Tensor& A, const at::Tensor& B, double coeff,
                                              bool suppress_only, bool need_p);
std::tuple<at::Tensor, at::Tensor> layer_ablate(const at::Tensor& x, const at::Tensor& W,
                                                const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                                const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& C,
                                                const at::Tensor& a, double coeff, bool need_p);
}  // namespace emulated

}  // namespace ax
