// Torch glue of the kernel family, written once for both kernel backends: turns the at::Tensor
// arguments of the registered ops (schemas in csrc/registration.cpp) into the raw-pointer calls of
// csrc/kernels/api.h. Same checks, dtype rules and outputs as the C++ CPU ops (csrc/cpu/ops_cpu.cpp):
// activations in f32/bf16/f16/f64, small parameters cast to the accumulation dtype (f64 for f64 p,
// else f32), h / dp in p's dtype, each parameter gradient in that parameter's dtype.
//
// A backend B provides (see CudaKernels in csrc/cuda/ops_cuda.cpp, EmulatedKernels in
// csrc/cpu/ops_emulated.cpp):
//   using Guard = ...;                         constructible from an at::Device (device guard)
//   static void* stream(const at::Tensor&);    the stream to launch on
//   static at::Tensor empty(sizes, options);   an output or workspace the kernels write
//   AX_KERNEL_BACKEND_FUNCTIONS(namespace)     the API functions of ax::cuda_impl or ax::emu_impl
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "csrc/kernels/api.h"
#include "csrc/ops.h"

// Static members of a backend struct, one per API function of namespace NS.
#define AX_KERNEL_BACKEND_FUNCTIONS(NS)                                         \
  static constexpr auto backend_name = &NS::backend_name;                       \
  static constexpr auto block_cayley_forward = &NS::block_cayley_forward;       \
  static constexpr auto block_cayley_backward = &NS::block_cayley_backward;     \
  static constexpr auto gain_forward = &NS::gain_forward;                       \
  static constexpr auto gain_backward = &NS::gain_backward;                     \
  static constexpr auto dplr_forward = &NS::dplr_forward;                       \
  static constexpr auto dplr_backward = &NS::dplr_backward;                     \
  static constexpr auto rot_forward = &NS::rot_forward;                         \
  static constexpr auto rot_backward = &NS::rot_backward;                       \
  static constexpr auto ablate_forward = &NS::ablate_forward;                   \
  static constexpr auto ablate_backward = &NS::ablate_backward;                 \
  static constexpr auto project_core_forward = &NS::project_core_forward;

namespace ax {
namespace glue {

inline DType kernel_dtype(const at::Tensor& p) {
  switch (p.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: break;
  }
  TORCH_CHECK(false, "antipasto_ext: p must be float32, float64, float16 or bfloat16, got ", p.scalar_type());
}

// Small parameter in the accumulation dtype, contiguous, on its own device.
inline at::Tensor acc_param(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

template <class B>
at::Tensor acc_buffer(int64_t n, const at::Tensor& like, at::ScalarType acc) {
  return B::empty({n}, like.options().dtype(acc));
}

inline int64_t rows_of(const at::Tensor& x, int64_t r) { return x.numel() / std::max<int64_t>(r, 1); }

// ---------------------------------------------------------------------------------- block_cayley

template <class B>
at::Tensor block_cayley(const at::Tensor& rot_T, int64_t block_size, double max_angle, double coeff) {
  check_block_cayley_args(rot_T, block_size, max_angle);
  typename B::Guard guard(rot_T.device());
  const auto acc = acc_dtype(rot_T.scalar_type());
  const at::Tensor t = rot_T.to(acc).contiguous();
  const int64_t n = t.size(0), bs = block_size;
  at::Tensor R = B::empty({n, bs, bs}, t.options());
  B::block_cayley_forward(acc == at::kDouble, t.data_ptr(), n, bs, cayley_a_lim(max_angle), coeff, R.data_ptr(),
                          B::stream(t));
  return R.to(rot_T.scalar_type());
}

template <class B>
at::Tensor block_cayley_backward(const at::Tensor& grad_R, const at::Tensor& R, const at::Tensor& rot_T,
                                 int64_t block_size, double max_angle, double coeff) {
  check_block_cayley_args(rot_T, block_size, max_angle);
  const int64_t n = rot_T.size(0), bs = block_size;
  check_float(grad_R, "grad_R");
  check_float(R, "R");
  TORCH_CHECK(R.sizes() == at::IntArrayRef({n, bs, bs}) && grad_R.sizes() == R.sizes(),
              "antipasto_ext: R and grad_R must have shape (", n, ", ", bs, ", ", bs, "), got ", R.sizes(), " and ",
              grad_R.sizes());
  TORCH_CHECK(R.device() == rot_T.device() && grad_R.device() == rot_T.device(),
              "antipasto_ext: grad_R, R and rot_T must be on one device");
  typename B::Guard guard(rot_T.device());
  const auto acc = acc_dtype(rot_T.scalar_type());
  const at::Tensor t = rot_T.to(acc).contiguous(), Ra = R.to(acc).contiguous(), G = grad_R.to(acc).contiguous();
  at::Tensor dt = B::empty(t.sizes(), t.options());
  B::block_cayley_backward(acc == at::kDouble, G.data_ptr(), Ra.data_ptr(), t.data_ptr(), n, bs,
                           cayley_a_lim(max_angle), coeff, dt.data_ptr(), B::stream(t));
  return dt.to(rot_T.scalar_type());
}

// ------------------------------------------------------------------------------------------ gain

template <class B>
at::Tensor gain_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, double coeff,
                     bool suppress_only) {
  check_core_args(p, S, {{"g", g, {S.size(0)}}});
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), Sa = acc_param(S, acc), ga = acc_param(g, acc);
  at::Tensor h = B::empty(x.sizes(), x.options());
  const int64_t r = S.size(0);
  B::gain_forward(dt, x.data_ptr(), rows_of(x, r), r, Sa.data_ptr(), ga.data_ptr(), coeff, suppress_only,
                  h.data_ptr(), B::stream(x));
  return h;
}

template <class B>
std::tuple<at::Tensor, at::Tensor> gain_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                      const at::Tensor& S, const at::Tensor& g, double coeff,
                                                      bool suppress_only) {
  check_core_args(p, S, {{"g", g, {S.size(0)}}, {"grad_h", grad_h, p.sizes()}});
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  const at::Tensor Sa = acc_param(S, acc), ga = acc_param(g, acc);
  const int64_t r = S.size(0), n = rows_of(x, r), n_part = gain_partials(r);
  at::Tensor dp = B::empty(x.sizes(), x.options()), all = acc_buffer<B>(n_part, x, acc);
  at::Tensor ws = acc_buffer<B>(core_workspace_elems(n, n_part), x, acc);
  B::gain_backward(dt, dy.data_ptr(), x.data_ptr(), n, r, Sa.data_ptr(), ga.data_ptr(), coeff, suppress_only,
                   dp.data_ptr(), all.data_ptr(), ws.data_ptr(), B::stream(x));
  return {dp, all.to(g.scalar_type())};
}

// ------------------------------------------------------------------------------------------ dplr

template <class B>
at::Tensor dplr_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
                     const at::Tensor& B_, double coeff, bool suppress_only) {
  const int64_t r = S.size(0), k = A.dim() == 2 ? A.size(0) : 0;
  check_core_args(p, S, {{"g", g, {r}}, {"A", A, {k, r}}, {"B", B_, {r, k}}});
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), Sa = acc_param(S, acc), ga = acc_param(g, acc), Aa = acc_param(A, acc),
                   Ba = acc_param(B_, acc);
  at::Tensor h = B::empty(x.sizes(), x.options());
  B::dplr_forward(dt, x.data_ptr(), rows_of(x, r), r, k, Sa.data_ptr(), ga.data_ptr(), Aa.data_ptr(), Ba.data_ptr(),
                  coeff, suppress_only, h.data_ptr(), B::stream(x));
  return h;
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dplr_core_backward(
    const at::Tensor& grad_h, const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
    const at::Tensor& B_, double coeff, bool suppress_only) {
  const int64_t r = S.size(0), k = A.dim() == 2 ? A.size(0) : 0;
  check_core_args(p, S, {{"g", g, {r}}, {"A", A, {k, r}}, {"B", B_, {r, k}}, {"grad_h", grad_h, p.sizes()}});
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  const at::Tensor Sa = acc_param(S, acc), ga = acc_param(g, acc), Aa = acc_param(A, acc), Ba = acc_param(B_, acc);
  const int64_t n = rows_of(x, r), n_part = dplr_partials(r, k);
  at::Tensor dp = B::empty(x.sizes(), x.options()), all = acc_buffer<B>(n_part, x, acc);
  at::Tensor ws = acc_buffer<B>(core_workspace_elems(n, n_part), x, acc);
  B::dplr_backward(dt, dy.data_ptr(), x.data_ptr(), n, r, k, Sa.data_ptr(), ga.data_ptr(), Aa.data_ptr(),
                   Ba.data_ptr(), coeff, suppress_only, dp.data_ptr(), all.data_ptr(), ws.data_ptr(), B::stream(x));
  return {dp, all.narrow(0, 0, r).to(g.scalar_type(), false, true),
          all.narrow(0, r, k * r).view({k, r}).to(A.scalar_type(), false, true),
          all.narrow(0, r + k * r, k * r).view({r, k}).to(B_.scalar_type(), false, true)};
}

// ------------------------------------------------------------------------------------------- rot

template <class B>
at::Tensor rot_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& delta_s, const at::Tensor& R,
                    double coeff, int64_t side) {
  const int64_t r = S.size(0);
  check_rot_args(p, S, delta_s, R, side);
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), Sa = acc_param(S, acc), da = acc_param(delta_s, acc);
  const at::Tensor Ra = side == kRotNone ? at::Tensor() : acc_param(R, acc);
  const int64_t bs = side == kRotNone ? 1 : R.size(1);
  at::Tensor h = B::empty(x.sizes(), x.options());
  B::rot_forward(dt, x.data_ptr(), rows_of(x, r), r, bs, side, Sa.data_ptr(), da.data_ptr(),
                 Ra.defined() ? Ra.data_ptr() : nullptr, coeff, h.data_ptr(), B::stream(x));
  return h;
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> rot_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                                 const at::Tensor& S, const at::Tensor& delta_s,
                                                                 const at::Tensor& R, double coeff, int64_t side) {
  const int64_t r = S.size(0);
  check_rot_args(p, S, delta_s, R, side);
  check_core_args(p, S, {{"grad_h", grad_h, p.sizes()}});
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  const at::Tensor Sa = acc_param(S, acc), da = acc_param(delta_s, acc);
  const at::Tensor Ra = side == kRotNone ? at::Tensor() : acc_param(R, acc);
  const int64_t n = rows_of(x, r), bs = side == kRotNone ? 1 : R.size(1);
  const int64_t n_rot = side == kRotNone ? 0 : R.numel(), n_part = rot_partials(r, bs, side);
  at::Tensor dp = B::empty(x.sizes(), x.options()), all = acc_buffer<B>(n_part, x, acc);
  at::Tensor ws = acc_buffer<B>(core_workspace_elems(n, n_part), x, acc);
  B::rot_backward(dt, dy.data_ptr(), x.data_ptr(), n, r, bs, side, Sa.data_ptr(), da.data_ptr(),
                  Ra.defined() ? Ra.data_ptr() : nullptr, coeff, dp.data_ptr(), all.data_ptr(), ws.data_ptr(),
                  B::stream(x));
  return {dp, all.narrow(0, 0, r).to(delta_s.scalar_type(), false, true),
          all.narrow(0, r, n_rot).view(R.sizes()).to(R.scalar_type(), false, true)};
}

// ---------------------------------------------------------------------------------------- ablate

template <class B>
at::Tensor ablate_core(const at::Tensor& p, const at::Tensor& S, const at::Tensor& C, const at::Tensor& a,
                       double coeff) {
  const int64_t r = S.size(0), k = C.dim() == 2 ? C.size(1) : 0;
  check_core_args(p, S, {{"C", C, {r, k}}, {"a", a, {k}}});
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), Sa = acc_param(S, acc), Ca = acc_param(C, acc), aa = acc_param(a, acc);
  at::Tensor h = B::empty(x.sizes(), x.options());
  B::ablate_forward(dt, x.data_ptr(), rows_of(x, r), r, k, Sa.data_ptr(), Ca.data_ptr(), aa.data_ptr(), coeff,
                    h.data_ptr(), B::stream(x));
  return h;
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ablate_core_backward(const at::Tensor& grad_h, const at::Tensor& p,
                                                                    const at::Tensor& S, const at::Tensor& C,
                                                                    const at::Tensor& a, double coeff) {
  const int64_t r = S.size(0), k = C.dim() == 2 ? C.size(1) : 0;
  check_core_args(p, S, {{"C", C, {r, k}}, {"a", a, {k}}, {"grad_h", grad_h, p.sizes()}});
  typename B::Guard guard(p.device());
  const DType dt = kernel_dtype(p);
  const auto acc = acc_dtype(p.scalar_type());
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  const at::Tensor Sa = acc_param(S, acc), Ca = acc_param(C, acc), aa = acc_param(a, acc);
  const int64_t n = rows_of(x, r), n_part = ablate_partials(r, k);
  at::Tensor dp = B::empty(x.sizes(), x.options()), all = acc_buffer<B>(n_part, x, acc);
  at::Tensor ws = acc_buffer<B>(core_workspace_elems(n, n_part), x, acc);
  B::ablate_backward(dt, dy.data_ptr(), x.data_ptr(), n, r, k, Sa.data_ptr(), Ca.data_ptr(), aa.data_ptr(), coeff,
                     dp.data_ptr(), all.data_ptr(), ws.data_ptr(), B::stream(x));
  return {dp, all.narrow(0, 0, r * k).view({r, k}).to(C.scalar_type(), false, true),
          all.narrow(0, r * k, k).to(a.scalar_type(), false, true)};
}

}  // namespace glue
}  // namespace ax
