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

using CoreSig = T(c10::string_view, const T&, const T&, at::TensorList, double, int64_t);
using CoreBackwardSig =
    std::tuple<T, std::vector<T>>(c10::string_view, const T&, const T&, const T&, at::TensorList, double, int64_t);
using LayerSig = std::tuple<T, T>(c10::string_view, const T&, const T&, const OptT&, const T&, const T&, const T&,
                                  at::TensorList, double, int64_t, bool);

struct BlockCayley : torch::autograd::Function<BlockCayley> {
  static T forward(AutogradContext* ctx, const T& rot_T, int64_t bs, double max_angle, double coeff) {
    static auto fwd = op<T(const T&, int64_t, double, double)>("antipasto_ext::block_cayley");
    at::AutoDispatchBelowADInplaceOrView guard;
    T R = fwd.call(rot_T, bs, max_angle, coeff);
    ctx->save_for_backward({rot_T, R});
    ctx->saved_data["bs"] = bs;
    ctx->saved_data["max_angle"] = max_angle;
    ctx->saved_data["coeff"] = coeff;
    return R;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T(const T&, const T&, const T&, int64_t, double, double)>(
        "antipasto_ext::block_cayley_backward");
    const auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    return {bwd.call(grads[0], s[1], s[0], d.at("bs").toInt(), d.at("max_angle").toDouble(), d.at("coeff").toDouble()),
            T(), T(), T()};
  }
};

// The core's settings saved by a Function: name, coeff, option.
void save_core(AutogradContext* ctx, c10::string_view core, double coeff, int64_t option, size_t n_params) {
  ctx->saved_data["core"] = std::string(core);
  ctx->saved_data["coeff"] = coeff;
  ctx->saved_data["option"] = option;
  ctx->saved_data["n_params"] = int64_t(n_params);
}
std::string saved_core(AutogradContext* ctx) { return ctx->saved_data.at("core").toStringRef(); }

// core(core, p, S, params, coeff, option). backward returns one entry per argument (core | p | S | params... |
// coeff | option); needs_input_grad numbers the tensors only (p 0, S 1, params from 2).
struct CoreFn : torch::autograd::Function<CoreFn> {
  static T forward(AutogradContext* ctx, c10::string_view core, const T& p, const T& S, at::TensorList params,
                   double coeff, int64_t option) {
    static auto fwd = op<CoreSig>("antipasto_ext::core");
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<T> saved{p, S};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    save_core(ctx, core, coeff, option, params.size());
    return fwd.call(core, p, S, params, coeff, option);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<CoreBackwardSig>("antipasto_ext::core_backward");
    const auto s = ctx->get_saved_variables();
    const std::vector<T> params(s.begin() + 2, s.end());
    auto [dp, dparams] = bwd.call(saved_core(ctx), grads[0], s[0], s[1], params,
                                  ctx->saved_data.at("coeff").toDouble(), ctx->saved_data.at("option").toInt());
    variable_list out{T(), dp, T()};
    for (size_t i = 0; i < dparams.size(); ++i) out.push_back(ctx->needs_input_grad(2 + i) ? dparams[i] : T());
    out.push_back(T());
    out.push_back(T());
    return out;
  }
};

// The layer: one node per adapter layer. Forward runs the layer op with need_p (p = x Vh^T is saved, not handed
// to the caller unless asked). Backward, each piece only when asked for:
//   dh = dY U;  (dp, core parameter grads) = core_backward on p;
//   dx = dY W + dp Vh   (one GEMM accumulated into the other: addmm_, no extra pass over dx);
//   dW = dY^T x, dU = dY^T h (h recomputed from p), dVh = dp^T x (frozen in the modules), db = sum dY.
// Arguments: core | x | W | U | Vh | S | params... | coeff | option | need_p | bias; needs_input_grad numbers the
// tensors only (x 0, W 1, U 2, Vh 3, S 4, params from 5, then the bias when there is one, last).
struct LayerFn : torch::autograd::Function<LayerFn> {
  static variable_list forward(AutogradContext* ctx, c10::string_view core, const T& x, const T& W, const T& U,
                               const T& Vh, const T& S, at::TensorList params, double coeff, int64_t option,
                               bool need_p, const OptT& bias) {
    static auto fwd = op<LayerSig>("antipasto_ext::layer");
    std::vector<T> saved{x, W, U, Vh, S};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    save_core(ctx, core, coeff, option, params.size());
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, p] = fwd.call(core, x, W, bias, U, Vh, S, params, coeff, option, true);
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
    auto [dp, dparams] = core_bwd.call(core, at::mm(dY, U), p, S, params, coeff, option);
    const size_t n = params.size();
    variable_list out{T(),
                      ctx->needs_input_grad(0) ? at::mm(dY, W).addmm_(dp, Vh) : T(),
                      ctx->needs_input_grad(1) ? at::mm(dY.t(), x) : T(),
                      ctx->needs_input_grad(2) ? at::mm(dY.t(), core_fwd.call(core, p, S, params, coeff, option)) : T(),
                      ctx->needs_input_grad(3) ? at::mm(dp.t(), x) : T(),
                      T()};
    for (size_t i = 0; i < n; ++i) out.push_back(ctx->needs_input_grad(5 + i) ? dparams[i] : T());
    out.insert(out.end(), {T(), T(), T()});
    out.push_back(ctx->saved_data.at("bias").toBool() && ctx->needs_input_grad(5 + n) ? dY.sum(0) : T());
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
                       const T& S, at::TensorList params, double coeff, int64_t option, bool need_p) {
  if (records({&x, &W, &U, &Vh}, params, bias)) {
    auto out = LayerFn::apply(core, x, W, U, Vh, S, params, coeff, option, need_p, bias);
    return {out[0], out[1]};
  }
  static auto fwd = op<LayerSig>("antipasto_ext::layer");
  at::AutoDispatchBelowADInplaceOrView guard;
  return fwd.call(core, x, W, bias, U, Vh, S, params, coeff, option, need_p);
}

}  // namespace

TORCH_LIBRARY_IMPL(antipasto_ext, Autograd, m) {
  m.impl("block_cayley", [](const T& t, int64_t bs, double a, double c) { return BlockCayley::apply(t, bs, a, c); });
  m.impl("core", [](c10::string_view core, const T& p, const T& S, at::TensorList params, double c, int64_t option) {
    return CoreFn::apply(core, p, S, params, c, option);
  });
  m.impl("layer", &layer);
}

}  // namespace ax
