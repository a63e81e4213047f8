// Argument checks of the registered ops, shared by every engine. Each names the offending argument, so bad
// input from Python surfaces as a clear error (a RuntimeError from TORCH_CHECK; the modules raise ValueError
// before it comes to that).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <initializer_list>

#include "csrc/kernels/api.h"
#include "csrc/kernels/math.h"

namespace ax {

// Float64 inputs accumulate in double, every other float dtype in float.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline DType kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: break;
  }
  TORCH_CHECK(false, "antipasto_ext: activations must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "antipasto_ext: ", name, " is undefined");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "antipasto_ext: ", name, " must be a floating tensor, got ",
              t.scalar_type());
}

inline double cayley_a_lim(double max_angle) { return 2.0 * std::tan(max_angle / 2.0); }

inline void check_block_cayley_args(const at::Tensor& rot_T, int64_t block_size, double max_angle) {
  TORCH_CHECK(block_size >= 2 && block_size <= kMaxCayleyBlock, "antipasto_ext: block_size must be in 2..",
              kMaxCayleyBlock, ", got ", block_size);
  check_float(rot_T, "rot_T");
  TORCH_CHECK(rot_T.dim() == 2 && rot_T.size(1) == block_size * (block_size - 1) / 2,
              "antipasto_ext: rot_T must have shape (n_blocks, block_size*(block_size-1)/2) = (n, ",
              block_size * (block_size - 1) / 2, "), got ", rot_T.sizes());
  TORCH_CHECK(max_angle > 0.0 && max_angle < M_PI, "antipasto_ext: max_angle must be in (0, pi), got ", max_angle);
}

// The activations of a core op: p (..., r), S (r,) on p's device.
inline void check_core_activations(const at::Tensor& p, const at::Tensor& S) {
  check_float(p, "p");
  check_float(S, "S");
  TORCH_CHECK(S.dim() == 1 && S.size(0) > 0, "antipasto_ext: S must be a non-empty 1-D tensor, got ", S.sizes());
  TORCH_CHECK(S.device() == p.device(), "antipasto_ext: S is on ", S.device(), " but p is on ", p.device());
  TORCH_CHECK(p.dim() >= 1 && p.size(-1) == S.size(0), "antipasto_ext: p must have last dim r = ", S.size(0), ", got ",
              p.sizes());
}

// The frozen layer of a layer op: x (n, d_in), W (d_out, d_in), bias (d_out) or none, U (d_out, r), Vh (r, d_in),
// all in x's dtype and on x's device; S (r,) on x's device.
inline void check_layer_args(const at::Tensor& x, const at::Tensor& W, const c10::optional<at::Tensor>& bias,
                             const at::Tensor& U, const at::Tensor& Vh, const at::Tensor& S) {
  check_float(x, "x");
  check_float(S, "S");
  TORCH_CHECK(x.dim() == 2, "antipasto_ext: x must be 2-D (tokens, d_in), got ", x.sizes());
  TORCH_CHECK(S.dim() == 1 && S.size(0) > 0, "antipasto_ext: S must be a non-empty 1-D tensor, got ", S.sizes());
  TORCH_CHECK(S.device() == x.device(), "antipasto_ext: S is on ", S.device(), " but x is on ", x.device());
  auto same = [&](const at::Tensor& t, const char* name) {
    check_float(t, name);
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "antipasto_ext: ", name, " has dtype ", t.scalar_type(),
                " but x has ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "antipasto_ext: ", name, " is on ", t.device(), " but x is on ", x.device());
  };
  same(Vh, "Vh");
  TORCH_CHECK(Vh.dim() == 2 && Vh.size(0) == S.size(0) && Vh.size(1) == x.size(1),
              "antipasto_ext: Vh must have shape (r, d_in) = (", S.size(0), ", ", x.size(1), "), got ", Vh.sizes());
  same(W, "W");
  TORCH_CHECK(W.dim() == 2 && W.size(1) == x.size(1), "antipasto_ext: W must have shape (d_out, d_in) with d_in = ",
              x.size(1), ", got ", W.sizes());
  const int64_t d_out = W.size(0);
  same(U, "U");
  TORCH_CHECK(U.dim() == 2 && U.size(0) == d_out && U.size(1) == Vh.size(0),
              "antipasto_ext: U must have shape (d_out, r) = (", d_out, ", ", Vh.size(0), "), got ", U.sizes());
  if (bias.has_value() && bias->defined()) {
    same(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d_out, "antipasto_ext: bias must have shape (", d_out,
                "), got ", bias->sizes());
  }
}

}  // namespace ax
