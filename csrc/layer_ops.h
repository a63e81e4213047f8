// Torch glue of the layer ops (schemas in csrc/registration.cpp): the whole adapter layer for each core,
//   y = x W^T + b + h U^T,   h = core(x Vh^T),
// returning (y, p) with p = x Vh^T only when need_p (autograd sets it; else p is an empty (0, r) tensor).
// The frozen GEMM runs first (cuBLAS / the CPU BLAS, bias in its epilogue) and the adapter's output GEMM
// accumulates into it (addmm_, beta = 1: no extra pass over y).
//
// The projection h = core(x Vh^T) has two paths, one result contract:
//   fused     the hand-written kernel of csrc/kernels/project.cuh (tensor-core projection, core in the
//             epilogue, split-K for decode), on a backend B that has one and for the shapes it takes;
//   unfused   p = at::mm(x, Vh^T) (cuBLAS / the CPU BLAS) and the registered core op on p.
// B decides whether the fused kernel is worth it for n rows (B::fuse_rows, see the backends); shapes it
// cannot take (fp32 / fp64, misaligned or non-contiguous x, d_in % 8, r > 256, k > 32) take the unfused path.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <tuple>

#include "csrc/kernels/api.h"
#include "csrc/ops.h"

namespace ax {
namespace project {

using T = at::Tensor;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// The CPU ops' native engine: no fused kernel, the unfused path on the C++ CPU cores.
struct Unfused {
  static constexpr bool has_fused_kernel = false;
};

inline bool aligned16(const T& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

template <class B>
bool fused_fits(const T& x, const T& Vh, const ProjectCore& c) {
  const auto dt = x.scalar_type();
  const int64_t r = Vh.size(0), d_in = x.size(1);
  const bool lowrank = c.kind == kProjectDplr || c.kind == kProjectAblate;
  return (dt == at::kBFloat16 || dt == at::kHalf) && x.is_contiguous() && Vh.is_contiguous() && aligned16(x) &&
         aligned16(Vh) && d_in % 8 == 0 && r <= kProjectMaxR && (!lowrank || (c.k >= 1 && c.k <= kProjectMaxLowRank)) &&
         B::fuse_rows(x.size(0));
}

inline T no_p(const T& x, int64_t r) { return at::empty({0, r}, x.options()); }

// The core's parameters in the ProjectCore slots S, g, R, A, B, a (undefined where the core has none).
using CoreParams = std::array<T, 6>;

// The fused kernel on float copies of the core's parameters (c's pointers are filled from them).
template <class B>
std::tuple<T, T> fused(const T& x, const T& Vh, ProjectCore c, bool need_p, const CoreParams& params) {
  typename B::Guard guard(x.device());
  CoreParams f;
  for (size_t i = 0; i < f.size(); ++i) f[i] = params[i].defined() ? params[i].to(at::kFloat).contiguous() : T();
  auto ptr = [](const T& t) -> const void* { return t.defined() ? t.data_ptr() : nullptr; };
  c.S = ptr(f[0]), c.g = ptr(f[1]), c.R = ptr(f[2]), c.A = ptr(f[3]), c.B = ptr(f[4]), c.a = ptr(f[5]);
  const int64_t n = x.size(0), d_in = x.size(1), r = Vh.size(0);
  T h = B::empty({n, r}, x.options());
  T p = need_p ? B::empty({n, r}, x.options()) : no_p(x, r);
  const int64_t ws_elems = project_workspace_elems(n, d_in, r);
  T ws = ws_elems > 0 ? B::empty({ws_elems}, x.options().dtype(at::kFloat)) : T();
  B::project_core_forward(x.scalar_type() == at::kHalf ? DType::f16 : DType::bf16, x.data_ptr(), Vh.data_ptr(), n,
                          d_in, r, c, h.data_ptr(), need_p ? p.data_ptr() : nullptr,
                          ws.defined() ? ws.data_ptr() : nullptr, B::stream(x));
  return {h, p};
}

// (h, p): the fused kernel where B has it and it fits, else p = x Vh^T by the BLAS and h = core_on_p(p).
template <class B, class CoreOnP>
std::tuple<T, T> project(const T& x, const T& Vh, const ProjectCore& c, bool need_p, const CoreParams& params,
                         const CoreOnP& core_on_p) {
  if constexpr (B::has_fused_kernel) {
    if (fused_fits<B>(x, Vh, c)) return fused<B>(x, Vh, c, need_p, params);
  }
  const T p = at::mm(x, Vh.t());
  return {core_on_p(p), need_p ? p : no_p(p, p.size(1))};
}

// W (d_out, d_in), bias (d_out) or none, U (d_out, r): x's dtype and device.
inline void check_layer_args(const T& x, const T& W, const c10::optional<T>& bias, const T& U, const T& Vh,
                             const T& S) {
  check_project_args(x, Vh, S);
  auto same = [&](const T& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "antipasto_ext: ", name, " has dtype ", t.scalar_type(),
                " but x has ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "antipasto_ext: ", name, " is on ", t.device(), " but x is on ", x.device());
  };
  TORCH_CHECK(W.dim() == 2 && W.size(1) == x.size(1), "antipasto_ext: W must have shape (d_out, d_in) with d_in = ",
              x.size(1), ", got ", W.sizes());
  same(W, "W");
  const int64_t d_out = W.size(0);
  TORCH_CHECK(U.dim() == 2 && U.size(0) == d_out && U.size(1) == Vh.size(0),
              "antipasto_ext: U must have shape (d_out, r) = (", d_out, ", ", Vh.size(0), "), got ", U.sizes());
  same(U, "U");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d_out, "antipasto_ext: bias must have shape (", d_out,
                "), got ", bias->sizes());
    same(*bias, "bias");
  }
}

// y = x W^T + b + h U^T: the frozen GEMM (bias in its epilogue), then the adapter's GEMM accumulated into it.
inline T layer_output(const T& x, const T& W, const c10::optional<T>& bias, const T& U, const T& h) {
  T y = bias.has_value() && bias->defined() ? at::addmm(*bias, x, W.t()) : at::mm(x, W.t());
  return y.addmm_(h, U.t());
}

// h = core(x Vh^T) per core; x and Vh are checked by the layer op (check_layer_args) that calls these.
template <class B>
std::tuple<T, T> project_gain(const T& x, const T& Vh, const T& S, const T& g, double coeff, bool suppress_only,
                              bool need_p) {
  check_params(S, x.device(), {{"g", g, {S.size(0)}}});
  static auto core = op<T(const T&, const T&, const T&, double, bool)>("antipasto_ext::gain_core");
  ProjectCore c;
  c.kind = kProjectGain, c.coeff = coeff, c.suppress_only = suppress_only;
  return project<B>(x, Vh, c, need_p, {S, g, T(), T(), T(), T()},
                    [&](const T& p) { return core.call(p, S, g, coeff, suppress_only); });
}

template <class B>
std::tuple<T, T> project_rot(const T& x, const T& Vh, const T& S, const T& delta_s, const T& R, double coeff,
                             int64_t side, bool need_p) {
  check_rot_params(S, delta_s, R, side, x.device());
  static auto core = op<T(const T&, const T&, const T&, const T&, double, int64_t)>("antipasto_ext::rot_core");
  ProjectCore c;
  c.kind = kProjectRot, c.side = side, c.bs = side == kRotNone ? 1 : R.size(1), c.coeff = coeff;
  return project<B>(x, Vh, c, need_p, {S, delta_s, side == kRotNone ? T() : R, T(), T(), T()},
                    [&](const T& p) { return core.call(p, S, delta_s, R, coeff, side); });
}

template <class B>
std::tuple<T, T> project_dplr(const T& x, const T& Vh, const T& S, const T& g, const T& A, const T& B_, double coeff,
                              bool suppress_only, bool need_p) {
  const int64_t r = S.size(0), k = A.dim() == 2 ? A.size(0) : 0;
  check_params(S, x.device(), {{"g", g, {r}}, {"A", A, {k, r}}, {"B", B_, {r, k}}});
  static auto core =
      op<T(const T&, const T&, const T&, const T&, const T&, double, bool)>("antipasto_ext::dplr_core");
  ProjectCore c;
  c.kind = kProjectDplr, c.k = k, c.coeff = coeff, c.suppress_only = suppress_only;
  return project<B>(x, Vh, c, need_p, {S, g, T(), A, B_, T()},
                    [&](const T& p) { return core.call(p, S, g, A, B_, coeff, suppress_only); });
}

template <class B>
std::tuple<T, T> project_ablate(const T& x, const T& Vh, const T& S, const T& C, const T& a, double coeff,
                                bool need_p) {
  const int64_t r = S.size(0), k = C.dim() == 2 ? C.size(1) : 0;
  check_params(S, x.device(), {{"C", C, {r, k}}, {"a", a, {k}}});
  static auto core = op<T(const T&, const T&, const T&, const T&, double)>("antipasto_ext::ablate_core");
  ProjectCore c;
  c.kind = kProjectAblate, c.k = k, c.coeff = coeff;
  return project<B>(x, Vh, c, need_p, {S, T(), T(), C, C, a},
                    [&](const T& p) { return core.call(p, S, C, a, coeff); });
}

// ------------------------------------------------------------------------------------ layer ops

template <class B>
std::tuple<T, T> layer_gain(const T& x, const T& W, const c10::optional<T>& bias, const T& U, const T& Vh, const T& S,
                            const T& g, double coeff, bool suppress_only, bool need_p) {
  check_layer_args(x, W, bias, U, Vh, S);
  auto [h, p] = project_gain<B>(x, Vh, S, g, coeff, suppress_only, need_p);
  return {layer_output(x, W, bias, U, h), p};
}

template <class B>
std::tuple<T, T> layer_rot(const T& x, const T& W, const c10::optional<T>& bias, const T& U, const T& Vh, const T& S,
                           const T& delta_s, const T& R, double coeff, int64_t side, bool need_p) {
  check_layer_args(x, W, bias, U, Vh, S);
  auto [h, p] = project_rot<B>(x, Vh, S, delta_s, R, coeff, side, need_p);
  return {layer_output(x, W, bias, U, h), p};
}

template <class B>
std::tuple<T, T> layer_dplr(const T& x, const T& W, const c10::optional<T>& bias, const T& U, const T& Vh, const T& S,
                            const T& g, const T& A, const T& B_, double coeff, bool suppress_only, bool need_p) {
  check_layer_args(x, W, bias, U, Vh, S);
  auto [h, p] = project_dplr<B>(x, Vh, S, g, A, B_, coeff, suppress_only, need_p);
  return {layer_output(x, W, bias, U, h), p};
}

template <class B>
std::tuple<T, T> layer_ablate(const T& x, const T& W, const c10::optional<T>& bias, const T& U, const T& Vh,
                              const T& S, const T& C, const T& a, double coeff, bool need_p) {
  check_layer_args(x, W, bias, U, Vh, S);
  auto [h, p] = project_ablate<B>(x, Vh, S, C, a, coeff, need_p);
  return {layer_output(x, W, bias, U, h), p};
}

}  // namespace project
}  // namespace ax
