// Autograd of the forward ops, in C++ (Autograd dispatch key, any device), written once for every core: each
// forward op saves its inputs and its backward calls the backward op. Kept out of Python so a layer call pays no
// Python round trip in forward or backward (the ops are tiny; the overhead would dominate).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace ax {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using T = at::Tensor;
using OptT = c10::optional<T>;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using CoreSig = T(c10::string_view, const T&, const T&, at::TensorList, double, int64_t, const OptT&, const OptT&);
using CoreBackwardSig = std::tuple<T, std::vector<T>>(c10::string_view, const T&, const T&, const T&, at::TensorList,
                                                      double, int64_t, const OptT&, const OptT&);
using LayerSig = std::tuple<T, T>(c10::string_view, const T&, const T&, const OptT&, const T&, const T&, const T&,
                                  at::TensorList, double, int64_t, bool, const OptT&, const OptT&);
using CayleySig = T(const T&, int64_t, double, double, const OptT&);
using CayleyBackwardSig = T(const T&, const T&, const T&, int64_t, double, double, const OptT&);

// An optional tensor a Function keeps without differentiating it (the steering coefficients, adapter indices).
void save_opt(AutogradContext* ctx, const char* key, const OptT& t) {
  ctx->saved_data[key] = t.has_value() && t->defined() ? c10::IValue(*t) : c10::IValue();
}
OptT saved_opt(AutogradContext* ctx, const char* key) {
  const c10::IValue& v = ctx->saved_data.at(key);
  return v.isNone() ? OptT() : OptT(v.toTensor());
}

// block_cayley(rot_T, bs, max_angle, coeff, coeffs): one entry per argument in backward.
struct BlockCayley : torch::autograd::Function<BlockCayley> {
  static T forward(AutogradContext* ctx, const T& rot_T, int64_t bs, double max_angle, double coeff,
                   const OptT& coeffs) {
    static auto fwd = op<CayleySig>("antipasto_ext::block_cayley");
    at::AutoDispatchBelowADInplaceOrView guard;
    T R = fwd.call(rot_T, bs, max_angle, coeff, coeffs);
    ctx->save_for_backward({rot_T, R});
    ctx->saved_data["bs"] = bs;
    ctx->saved_data["max_angle"] = max_angle;
    ctx->saved_data["coeff"] = coeff;
    save_opt(ctx, "coeffs", coeffs);
    return R;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<CayleyBackwardSig>("antipasto_ext::block_cayley_backward");
    const auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    return {bwd.call(grads[0], s[1], s[0], d.at("bs").toInt(), d.at("max_angle").toDouble(), d.at("coeff").toDouble(),
                     saved_opt(ctx, "coeffs")),
            T(), T(), T(), T()};
  }
};

// The core's settings saved by a Function: name, coeff, option, coeffs, adapters.
void save_core(AutogradContext* ctx, c10::string_view core, double coeff, int64_t option, const OptT& coeffs,
               const OptT& adapters) {
  ctx->saved_data["core"] = std::string(core);
  ctx->saved_data["coeff"] = coeff;
  ctx->saved_data["option"] = option;
  save_opt(ctx, "coeffs", coeffs);
  save_opt(ctx, "adapters", adapters);
}
std::string saved_core(AutogradContext* ctx) { return ctx->saved_data.at("core").toStringRef(); }

// core(core, p, S, params, coeff, option, coeffs, adapters). backward returns one entry per argument (core | p | S |
// params... | coeff | option | coeffs | adapters); needs_input_grad numbers the tensors only (p 0, S 1, params
// from 2).
struct CoreFn : torch::autograd::Function<CoreFn> {
  static T forward(AutogradContext* ctx, c10::string_view core, const T& p, const T& S, at::TensorList params,
                   double coeff, int64_t option, const OptT& coeffs, const OptT& adapters) {
    static auto fwd = op<CoreSig>("antipasto_ext::core");
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<T> saved{p, S};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    save_core(ctx, core, coeff, option, coeffs, adapters);
    return fwd.call(core, p, S, params, coeff, option, coeffs, adapters);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<CoreBackwardSig>("antipasto_ext::core_backward");
    const auto s = ctx->get_saved_variables();
    const std::vector<T> params(s.begin() + 2, s.end());
    auto [dp, dparams] = bwd.call(saved_core(ctx), grads[0], s[0], s[1], params, ctx->saved_data.at("coeff").toDouble(),
                                  ctx->saved_data.at("option").toInt(), saved_opt(ctx, "coeffs"),
                                  saved_opt(ctx, "adapters"));
    variable_list out{T(), dp, T()};
    for (size_t i = 0; i < dparams.size(); ++i) out.push_back(ctx->needs_input_grad(2 + i) ? dparams[i] : T());
    out.insert(out.end(), {T(), T(), T(), T()});
    return out;
  }
};

// The layer: one node per adapter layer. Forward runs the layer op with need_p (p = x Vh^T is saved, not handed
// to the caller unless asked). Backward, each piece only when asked for:
//   dh = dY U;  (dp, core parameter grads) = core_backward on p;
//   dx = dY W + dp Vh   (one GEMM accumulated into the other: addmm_, no extra pass over dx);
//   dW = dY^T x, dU = dY^T h (h recomputed from p), dVh = dp^T x (frozen in the modules), db = sum dY.
// Arguments: core | x | W | U | Vh | S | params... | coeff | option | need_p | bias | coeffs | adapters; needs_input_grad
// numbers the tensors only (x 0, W 1, U 2, Vh 3, S 4, params from 5, then the bias when there is one).
struct LayerFn : torch::autograd::Function<LayerFn> {
  static variable_list forward(AutogradContext* ctx, c10::string_view core, const T& x, const T& W, const T& U,
                               const T& Vh, const T& S, at::TensorList params, double coeff, int64_t option,
                               bool need_p, const OptT& bias, const OptT& coeffs, const OptT& adapters) {
    static auto fwd = op<LayerSig>("antipasto_ext::layer");
    std::vector<T> saved{x, W, U, Vh, S};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    save_core(ctx, core, coeff, option, coeffs, adapters);
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, p] = fwd.call(core, x, W, bias, U, Vh, S, params, coeff, option, true, coeffs, adapters);
    ctx->saved_data["p"] = p;
    T p_out = need_p ? p : p.new_empty({0, p.size(1)});
    ctx->mark_non_differentiable({p_out});
    return {y, p_out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto core_fwd = op<CoreSig>("antipasto_ext::core");
    static auto core_bwd = op<CoreBackwardSig>("antipasto_ext::core_backward");
    const auto s = ctx->get_saved_variables();
    const T &x = s[0], &W = s[1], &U = s[2], &Vh = s[3], &S = s[4];
    const std::vector<T> params(s.begin() + 5, s.end());
    const std::string core = saved_core(ctx);
    const double coeff = ctx->saved_data.at("coeff").toDouble();
    const int64_t option = ctx->saved_data.at("option").toInt();
    const T p = ctx->saved_data.at("p").toTensor(), dY = grads[0];
    const OptT coeffs = saved_opt(ctx, "coeffs"), adapters = saved_opt(ctx, "adapters");
    auto [dp, dparams] = core_bwd.call(core, at::mm(dY, U), p, S, params, coeff, option, coeffs, adapters);
    const size_t n = params.size();
    variable_list out{T(),
                      ctx->needs_input_grad(0) ? at::mm(dY, W).addmm_(dp, Vh) : T(),
                      ctx->needs_input_grad(1) ? at::mm(dY.t(), x) : T(),
                      ctx->needs_input_grad(2) ? at::mm(dY.t(), core_fwd.call(core, p, S, params, coeff, option, coeffs, adapters)) : T(),
                      ctx->needs_input_grad(3) ? at::mm(dp.t(), x) : T(),
                      T()};
    for (size_t i = 0; i < n; ++i) out.push_back(ctx->needs_input_grad(5 + i) ? dparams[i] : T());
    out.insert(out.end(), {T(), T(), T()});
    out.push_back(ctx->saved_data.at("bias").toBool() && ctx->needs_input_grad(5 + n) ? dY.sum(0) : T());
    out.insert(out.end(), {T(), T()});
    return out;
  }
};

bool records(std::initializer_list<const T*> inputs, at::TensorList params, const OptT& bias) {
  if (!at::GradMode::is_enabled()) return false;
  for (const T* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  for (const T& t : params)
    if (t.defined() && t.requires_grad()) return true;
  return bias.has_value() && bias->defined() && bias->requires_grad();
}

// The layer op's Autograd kernel: the Function when autograd records, else the op below autograd.
std::tuple<T, T> layer(c10::string_view core, const T& x, const T& W, const OptT& bias, const T& U, const T& Vh,
                       const T& S, at::TensorList params, double coeff, int64_t option, bool need_p,
                       const OptT& coeffs, const OptT& adapters) {
  if (records({&x, &W, &U, &Vh}, params, bias)) {
    auto out = LayerFn::apply(core, x, W, U, Vh, S, params, coeff, option, need_p, bias, coeffs, adapters);
    return {out[0], out[1]};
  }
  static auto fwd = op<LayerSig>("antipasto_ext::layer");
  at::AutoDispatchBelowADInplaceOrView guard;
  return fwd.call(core, x, W, bias, U, Vh, S, params, coeff, option, need_p, coeffs, adapters);
}

}  // namespace

TORCH_LIBRARY_IMPL(antipasto_ext, Autograd, m) {
  m.impl("block_cayley", [](const T& t, int64_t bs, double a, double c, const OptT& coeffs) {
    return BlockCayley::apply(t, bs, a, c, coeffs);
  });
  m.impl("core", [](c10::string_view core, const T& p, const T& S, at::TensorList params, double c, int64_t option,
                    const OptT& coeffs, const OptT& adapters) {
    return CoreFn::apply(core, p, S, params, c, option, coeffs, adapters);
  });
  m.impl("layer", &layer);
}

}  // namespace ax
