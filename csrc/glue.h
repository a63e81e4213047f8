// The torch glue of every op, written once for the three kernel sets (csrc/kernel_sets.h): tensors in, the
// calls of csrc/kernels/api.h out. Activations in float32 / bfloat16 / float16 / float64; the core's parameters
// cast to the accumulation dtype (float64 for float64 activations, else float32); h, dp and p in the
// activations' dtype, each parameter gradient in its parameter's dtype.
//
// The layer op is the whole adapter layer, y = x W^T + b + h U^T with h = core(x Vh^T), returning (y, p) with
// p = x Vh^T only when need_p (else an empty (0, r) tensor). The frozen GEMM runs first (cuBLAS / the CPU BLAS,
// bias in its epilogue) and the adapter's output GEMM accumulates into it (addmm_, beta = 1: no extra pass over
// y). h = core(x Vh^T) has two paths, one result contract:
//   fused     the kernel set's project_forward (tensor-core projection, the core in the epilogue; for decode a
//             K-split kernel and a finish kernel, or one kernel: decode_path_setting) where the set has one,
//             K::fuse_rows(n) wants it and the shape fits it;
//   unfused   p = x Vh^T by the BLAS, then the core kernel.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "csrc/checks.h"
#include "csrc/cores.h"
#include "csrc/kernel_sets.h"
#include "csrc/kernels/api.h"

namespace ax {
namespace glue {

using T = at::Tensor;

inline int64_t rows_of(const T& x, int64_t r) { return x.numel() / std::max<int64_t>(r, 1); }
inline T no_p(const T& x, int64_t r) { return at::empty({0, r}, x.options()); }
inline bool aligned16(const T& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// h = core(p) for a packed core; p contiguous.
template <class K>
T core_forward_packed(const PackedCore& packed, const T& p) {
  T h = K::empty(p.sizes(), p.options());
  CoreCall call;
  call.dtype = kernel_dtype(p);
  call.n = rows_of(p, packed.params.r);
  call.core = packed.params;
  call.p = p.data_ptr();
  call.h = h.data_ptr();
  K::core_forward(call, K::stream(p));
  return h;
}

template <class K>
T core_forward(const CoreInputs& in, const T& p) {
  check_core_activations(p, in.S);
  typename K::Guard guard(p.device());
  const T x = p.contiguous();
  return core_forward_packed<K>(pack_core(in, x.device(), acc_dtype(x.scalar_type()), rows_of(x, in.S.size(0))), x);
}

template <class K>
std::tuple<T, std::vector<T>> core_backward(const CoreInputs& in, const T& grad_h, const T& p) {
  check_core_activations(p, in.S);
  check_float(grad_h, "grad_h");
  TORCH_CHECK(grad_h.sizes() == p.sizes(), "antipasto_ext: grad_h must have shape ", p.sizes(), ", got ",
              grad_h.sizes());
  typename K::Guard guard(p.device());
  const T x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  const auto acc = acc_dtype(x.scalar_type());
  const int64_t n = rows_of(x, in.S.size(0));
  const PackedCore packed = pack_core(in, x.device(), acc, n);
  T dp = K::empty(x.sizes(), x.options());
  T dparams = K::empty({core_dparams_elems(packed.params)}, x.options().dtype(acc));
  T ws = K::empty({core_workspace_elems(n, packed.params)}, x.options().dtype(acc));
  CoreCall call;
  call.dtype = kernel_dtype(x);
  call.n = n;
  call.core = packed.params;
  call.p = x.data_ptr();
  call.grad_h = dy.data_ptr();
  call.dp = dp.data_ptr();
  call.dparams = dparams.data_ptr();
  call.workspace = ws.data_ptr();
  K::core_backward(call, K::stream(x));
  return {dp, unpack_grads(in, packed, dparams)};
}

// What the fused kernel takes (csrc/kernels/project.cuh): 16-bit, contiguous, 16-byte aligned x and Vh,
// d_in % 8 == 0, and a core its epilogue applies (project_supports).
inline bool fused_fits(const T& x, const T& Vh, const CoreParams& c) {
  const auto dt = x.scalar_type();
  return (dt == at::kBFloat16 || dt == at::kHalf) && x.is_contiguous() && Vh.is_contiguous() && aligned16(x) &&
         aligned16(Vh) && x.size(1) % 8 == 0 && project_supports(c);
}

// (h, p) of x (n, d_in): the fused kernel where the kernel set has it and it fits, else the BLAS GEMM and the core.
template <class K>
std::tuple<T, T> project(const PackedCore& packed, const T& x, const T& Vh, bool need_p) {
  const int64_t n = x.size(0), d_in = x.size(1), r = packed.params.r;
  if constexpr (K::has_fused_projection) {
    if (K::fuse_rows(n) && fused_fits(x, Vh, packed.params)) {
      T h = K::empty({n, r}, x.options());
      T p = need_p ? K::empty({n, r}, x.options()) : no_p(x, r);
      DecodePath path = decode_path_setting();
      if (path == DecodePath::gemv && !project_gemv_fits(n, packed.params)) path = DecodePath::model;
      const int64_t ws_elems = project_workspace_elems(n, d_in, packed.params, path);
      T ws = ws_elems > 0 ? K::empty({ws_elems}, x.options().dtype(at::kFloat)) : T();
      ProjectCall call;
      call.dtype = kernel_dtype(x);
      call.n = n;
      call.d_in = d_in;
      call.core = packed.params;
      call.x = x.data_ptr();
      call.Vh = Vh.data_ptr();
      call.h = h.data_ptr();
      call.p_out = need_p ? p.data_ptr() : nullptr;
      call.workspace = ws.defined() ? ws.data_ptr() : nullptr;
      call.decode_path = path;
      K::project_forward(call, K::stream(x));
      return {h, p};
    }
  }
  const T p = at::mm(x, Vh.t());
  return {core_forward_packed<K>(packed, p), need_p ? p : no_p(p, r)};
}

template <class K>
std::tuple<T, T> layer(const CoreInputs& in, const T& x, const T& W, const c10::optional<T>& bias, const T& U,
                       const T& Vh, bool need_p) {
  check_layer_args(x, W, bias, U, Vh, in.S);
  typename K::Guard guard(x.device());
  // The fused kernel reads float parameters; the unfused path accumulates in float too for 16-bit x.
  const auto acc = acc_dtype(x.scalar_type());
  auto [h, p] = project<K>(pack_core(in, x.device(), acc, x.size(0)), x, Vh, need_p);
  T y = bias.has_value() && bias->defined() ? at::addmm(*bias, x, W.t()) : at::mm(x, W.t());
  y.addmm_(h, U.t());
  return {y, p};
}

// With coeffs (G,): the rotation sets at each coefficient, (G, n_blocks, bs, bs), one Cayley block per set and
// block: of one generator rot_T (n_blocks, m), repeated per set, or of one generator per set, rot_T (G, n_blocks, m).
struct CayleyInputs {
  T t;       // (sets * n_blocks, bs (bs - 1) / 2) accumulators
  T coeffs;  // (sets,) accumulators, or undefined
  int64_t sets, n_blocks;
  bool per_set;  // rot_T holds one generator per set
};
inline CayleyInputs cayley_inputs(const T& rot_T, int64_t block_size, double max_angle, const c10::optional<T>& coeffs) {
  const auto acc = acc_dtype(rot_T.scalar_type());
  const bool steered = coeffs.has_value() && coeffs->defined();
  const bool per_set = steered && rot_T.dim() == 3;
  check_block_cayley_args(per_set ? rot_T[0] : rot_T, block_size, max_angle);
  if (!steered) return {rot_T.to(acc).contiguous(), T(), 0, rot_T.size(0), false};
  check_float(*coeffs, "coeffs");
  TORCH_CHECK(coeffs->dim() == 1 && coeffs->numel() > 0, "antipasto_ext: coeffs must be a non-empty 1-D tensor, got ",
              coeffs->sizes());
  TORCH_CHECK(coeffs->device() == rot_T.device(), "antipasto_ext: coeffs is on ", coeffs->device(),
              " but rot_T is on ", rot_T.device());
  const int64_t sets = coeffs->numel();
  TORCH_CHECK(!per_set || rot_T.size(0) == sets, "antipasto_ext: rot_T holds ", rot_T.size(0),
              " generators but coeffs has ", sets, " entries");
  const int64_t n_blocks = rot_T.size(per_set ? 1 : 0), m = rot_T.size(-1);
  T t = per_set ? rot_T.to(acc).reshape({sets * n_blocks, m}).contiguous() : rot_T.to(acc).repeat({sets, 1});
  return {t.contiguous(), coeffs->to(acc).contiguous(), sets, n_blocks, per_set};
}
inline void set_cayley_coeffs(CayleyCall& call, const CayleyInputs& in, int64_t n_blocks) {
  if (!in.coeffs.defined()) return;
  call.coeffs = in.coeffs.data_ptr();
  call.blocks_per_coeff = n_blocks;
}

template <class K>
T block_cayley(const T& rot_T, int64_t block_size, double max_angle, double coeff, const c10::optional<T>& coeffs) {
  typename K::Guard guard(rot_T.device());
  const CayleyInputs in = cayley_inputs(rot_T, block_size, max_angle, coeffs);
  const T& t = in.t;
  T R = K::empty({t.size(0), block_size, block_size}, t.options());
  CayleyCall call;
  call.f64 = t.scalar_type() == at::kDouble;
  call.n_blocks = t.size(0);
  call.bs = block_size;
  call.a_lim = cayley_a_lim(max_angle);
  call.coeff = coeff;
  set_cayley_coeffs(call, in, in.n_blocks);
  call.t = t.data_ptr();
  call.R = R.data_ptr();
  K::cayley_forward(call, K::stream(t));
  if (in.sets) R = R.view({in.sets, in.n_blocks, block_size, block_size});
  return R.to(rot_T.scalar_type());
}

// With coeffs: d rot_T summed over the sets (one generator), or per set.
template <class K>
T block_cayley_backward(const T& grad_R, const T& R, const T& rot_T, int64_t block_size, double max_angle,
                        double coeff, const c10::optional<T>& coeffs) {
  const int64_t bs = block_size;
  check_float(grad_R, "grad_R");
  check_float(R, "R");
  typename K::Guard guard(rot_T.device());
  const CayleyInputs in = cayley_inputs(rot_T, block_size, max_angle, coeffs);
  const int64_t n = in.n_blocks;
  std::vector<int64_t> shape{n, bs, bs};
  if (in.sets) shape.insert(shape.begin(), in.sets);
  TORCH_CHECK(R.sizes() == at::IntArrayRef(shape) && grad_R.sizes() == R.sizes(), "antipasto_ext: R and grad_R must have shape ",
              at::IntArrayRef(shape), ", got ", R.sizes(), " and ", grad_R.sizes());
  TORCH_CHECK(R.device() == rot_T.device() && grad_R.device() == rot_T.device(),
              "antipasto_ext: grad_R, R and rot_T must be on one device");
  const T& t = in.t;
  const auto acc = t.scalar_type();
  const T Ra = R.to(acc).contiguous(), G = grad_R.to(acc).contiguous();
  T dt = K::empty(t.sizes(), t.options());
  CayleyCall call;
  call.f64 = acc == at::kDouble;
  call.n_blocks = t.size(0);
  call.bs = bs;
  call.a_lim = cayley_a_lim(max_angle);
  call.coeff = coeff;
  set_cayley_coeffs(call, in, n);
  call.t = t.data_ptr();
  call.R = Ra.data_ptr();
  call.grad_R = G.data_ptr();
  call.dt = dt.data_ptr();
  K::cayley_backward(call, K::stream(t));
  if (in.sets) dt = in.per_set ? dt.view(rot_T.sizes()) : dt.view({in.sets, n, t.size(1)}).sum(0);
  return dt.to(rot_T.scalar_type());
}

}  // namespace glue
}  // namespace ax
