// Autograd of the forward ops, in C++ (Autograd dispatch key, any device): each forward op saves its
// inputs and its backward calls the matching *_backward op. Kept out of Python so a layer call pays
// no Python round trip in forward or backward (the ops are tiny; the overhead would dominate).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <functional>
#include <vector>

namespace ax {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using T = at::Tensor;
using T2 = std::tuple<T, T>;
using T3 = std::tuple<T, T, T>;
using T4 = std::tuple<T, T, T, T>;

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

struct GainCore : torch::autograd::Function<GainCore> {
  static T forward(AutogradContext* ctx, const T& p, const T& S, const T& g, double coeff, bool suppress) {
    static auto fwd = op<T(const T&, const T&, const T&, double, bool)>("antipasto_ext::gain_core");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({p, S, g});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["suppress"] = suppress;
    return fwd.call(p, S, g, coeff, suppress);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T2(const T&, const T&, const T&, const T&, double, bool)>("antipasto_ext::gain_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dg] = bwd.call(grads[0], s[0], s[1], s[2], ctx->saved_data.at("coeff").toDouble(),
                             ctx->saved_data.at("suppress").toBool());
    return {dp, T(), dg, T(), T()};
  }
};

struct DplrCore : torch::autograd::Function<DplrCore> {
  static T forward(AutogradContext* ctx, const T& p, const T& S, const T& g, const T& A, const T& B, double coeff,
                   bool suppress) {
    static auto fwd =
        op<T(const T&, const T&, const T&, const T&, const T&, double, bool)>("antipasto_ext::dplr_core");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({p, S, g, A, B});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["suppress"] = suppress;
    return fwd.call(p, S, g, A, B, coeff, suppress);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T4(const T&, const T&, const T&, const T&, const T&, const T&, double, bool)>(
        "antipasto_ext::dplr_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dg, dA, dB] = bwd.call(grads[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data.at("coeff").toDouble(),
                                     ctx->saved_data.at("suppress").toBool());
    return {dp, T(), dg, dA, dB, T(), T()};
  }
};

struct RotCore : torch::autograd::Function<RotCore> {
  static T forward(AutogradContext* ctx, const T& p, const T& S, const T& delta_s, const T& R, double coeff,
                   int64_t side) {
    static auto fwd = op<T(const T&, const T&, const T&, const T&, double, int64_t)>("antipasto_ext::rot_core");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({p, S, delta_s, R});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["side"] = side;
    return fwd.call(p, S, delta_s, R, coeff, side);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T3(const T&, const T&, const T&, const T&, const T&, double, int64_t)>(
        "antipasto_ext::rot_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dds, dR] = bwd.call(grads[0], s[0], s[1], s[2], s[3], ctx->saved_data.at("coeff").toDouble(),
                                  ctx->saved_data.at("side").toInt());
    return {dp, T(), dds, dR, T(), T()};
  }
};

struct AblateCore : torch::autograd::Function<AblateCore> {
  static T forward(AutogradContext* ctx, const T& p, const T& S, const T& C, const T& a, double coeff) {
    static auto fwd = op<T(const T&, const T&, const T&, const T&, double)>("antipasto_ext::ablate_core");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({p, S, C, a});
    ctx->saved_data["coeff"] = coeff;
    return fwd.call(p, S, C, a, coeff);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T3(const T&, const T&, const T&, const T&, const T&, double)>(
        "antipasto_ext::ablate_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dC, da] = bwd.call(grads[0], s[0], s[1], s[2], s[3], ctx->saved_data.at("coeff").toDouble());
    return {dp, T(), dC, da, T()};
  }
};

// --------------------------------------------------------------------------------- layer ops
// One node per adapter layer. Forward runs the layer op with need_p (p = x Vh^T is saved, not handed to
// the caller unless asked). Backward, each piece only when asked for:
//   dh = dY U;  (dp, core parameter grads) = the core's *_backward op on p;
//   dx = dY W + dp Vh   (one GEMM accumulated into the other: addmm_, no extra pass over dx);
//   dW = dY^T x, dU = dY^T h (h recomputed from p), dVh = dp^T x (frozen in the modules), db = sum dY.
// The Functions take the optional bias last: autograd numbers only the tensors that are present, so
// every other input keeps its needs_input_grad index whether or not there is a bias.

using OptT = c10::optional<T>;

bool records(std::initializer_list<const T*> inputs, const OptT& bias) {
  if (!at::GradMode::is_enabled()) return false;
  for (const T* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return bias.has_value() && bias->defined() && bias->requires_grad();
}

// Fn::apply(x, W, rest..., bias) when autograd records, else the op below autograd; returns (y, p).
template <class Fn, class Sig, class... Args>
T2 layer_dispatch(const char* name, std::initializer_list<const T*> inputs, const T& x, const T& W, const OptT& bias,
                  Args&&... rest) {
  if (records(inputs, bias)) {
    auto out = Fn::apply(x, W, std::forward<Args>(rest)..., bias);
    return {out[0], out[1]};
  }
  static auto fwd = op<Sig>(name);
  at::AutoDispatchBelowADInplaceOrView guard;
  return fwd.call(x, W, bias, std::forward<Args>(rest)...);
}

// Runs the layer op with need_p = true, keeps p for backward, hands the caller p only if it asked.
template <class Sig, class... Args>
variable_list layer_forward(AutogradContext* ctx, const char* name, bool need_p, const T& x, const T& W,
                            const OptT& bias, Args&&... rest) {
  static auto fwd = op<Sig>(name);
  at::AutoDispatchBelowADInplaceOrView guard;
  auto [y, p] = fwd.call(x, W, bias, std::forward<Args>(rest)..., true);
  ctx->saved_data["p"] = p;
  T p_out = need_p ? p : p.new_empty({0, p.size(1)});
  ctx->mark_non_differentiable({p_out});
  return {y, p_out};
}

// Saved by every layer Function: x, W, U, Vh, S, then the core's parameters (inputs 0.. in that order).
// Returns {dx, dW, dU, dVh} from dY, dp and (only for dU) h = core(p).
std::array<T, 4> layer_input_grads(AutogradContext* ctx, const T& dY, const T& dp, const variable_list& s,
                                   const std::function<T()>& h) {
  const T &x = s[0], &W = s[1], &Vh = s[3];
  return {ctx->needs_input_grad(0) ? at::mm(dY, W).addmm_(dp, Vh) : T(),
          ctx->needs_input_grad(1) ? at::mm(dY.t(), x) : T(),
          ctx->needs_input_grad(2) ? at::mm(dY.t(), h()) : T(),
          ctx->needs_input_grad(3) ? at::mm(dp.t(), x) : T()};
}

using LayerGainSig = T2(const T&, const T&, const OptT&, const T&, const T&, const T&, const T&, double, bool, bool);
using LayerRotSig =
    T2(const T&, const T&, const OptT&, const T&, const T&, const T&, const T&, const T&, double, int64_t, bool);
using LayerDplrSig = T2(const T&, const T&, const OptT&, const T&, const T&, const T&, const T&, const T&, const T&,
                        double, bool, bool);
using LayerAblateSig =
    T2(const T&, const T&, const OptT&, const T&, const T&, const T&, const T&, const T&, double, bool);

struct LayerGain : torch::autograd::Function<LayerGain> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& W, const T& U, const T& Vh, const T& S,
                               const T& g, double coeff, bool suppress, bool need_p, const OptT& bias) {
    ctx->save_for_backward({x, W, U, Vh, S, g});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["suppress"] = suppress;
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    return layer_forward<LayerGainSig>(ctx, "antipasto_ext::layer_gain", need_p, x, W, bias, U, Vh, S, g, coeff,
                                       suppress);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto fwd = op<T(const T&, const T&, const T&, double, bool)>("antipasto_ext::gain_core");
    static auto bwd = op<T2(const T&, const T&, const T&, const T&, double, bool)>("antipasto_ext::gain_core_backward");
    const auto s = ctx->get_saved_variables();
    const T p = ctx->saved_data.at("p").toTensor(), dY = grads[0];
    const double coeff = ctx->saved_data.at("coeff").toDouble();
    const bool suppress = ctx->saved_data.at("suppress").toBool();
    auto [dp, dg] = bwd.call(at::mm(dY, s[2]), p, s[4], s[5], coeff, suppress);
    auto [dx, dW, dU, dVh] =
        layer_input_grads(ctx, dY, dp, s, [&] { return fwd.call(p, s[4], s[5], coeff, suppress); });
    const T db = ctx->saved_data.at("bias").toBool() && ctx->needs_input_grad(6) ? dY.sum(0) : T();
    return {dx, dW, dU, dVh, T(), dg, T(), T(), T(), db};
  }
};

struct LayerRot : torch::autograd::Function<LayerRot> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& W, const T& U, const T& Vh, const T& S,
                               const T& delta_s, const T& R, double coeff, int64_t side, bool need_p,
                               const OptT& bias) {
    ctx->save_for_backward({x, W, U, Vh, S, delta_s, R});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["side"] = side;
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    return layer_forward<LayerRotSig>(ctx, "antipasto_ext::layer_rot", need_p, x, W, bias, U, Vh, S, delta_s, R,
                                      coeff, side);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto fwd = op<T(const T&, const T&, const T&, const T&, double, int64_t)>("antipasto_ext::rot_core");
    static auto bwd = op<T3(const T&, const T&, const T&, const T&, const T&, double, int64_t)>(
        "antipasto_ext::rot_core_backward");
    const auto s = ctx->get_saved_variables();
    const T p = ctx->saved_data.at("p").toTensor(), dY = grads[0];
    const double coeff = ctx->saved_data.at("coeff").toDouble();
    const int64_t side = ctx->saved_data.at("side").toInt();
    auto [dp, dds, dR] = bwd.call(at::mm(dY, s[2]), p, s[4], s[5], s[6], coeff, side);
    auto [dx, dW, dU, dVh] =
        layer_input_grads(ctx, dY, dp, s, [&] { return fwd.call(p, s[4], s[5], s[6], coeff, side); });
    const T db = ctx->saved_data.at("bias").toBool() && ctx->needs_input_grad(7) ? dY.sum(0) : T();
    return {dx, dW, dU, dVh, T(), dds, ctx->needs_input_grad(6) ? dR : T(), T(), T(), T(), db};
  }
};

struct LayerDplr : torch::autograd::Function<LayerDplr> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& W, const T& U, const T& Vh, const T& S,
                               const T& g, const T& A, const T& B, double coeff, bool suppress, bool need_p,
                               const OptT& bias) {
    ctx->save_for_backward({x, W, U, Vh, S, g, A, B});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["suppress"] = suppress;
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    return layer_forward<LayerDplrSig>(ctx, "antipasto_ext::layer_dplr", need_p, x, W, bias, U, Vh, S, g, A, B, coeff,
                                       suppress);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto fwd =
        op<T(const T&, const T&, const T&, const T&, const T&, double, bool)>("antipasto_ext::dplr_core");
    static auto bwd = op<T4(const T&, const T&, const T&, const T&, const T&, const T&, double, bool)>(
        "antipasto_ext::dplr_core_backward");
    const auto s = ctx->get_saved_variables();
    const T p = ctx->saved_data.at("p").toTensor(), dY = grads[0];
    const double coeff = ctx->saved_data.at("coeff").toDouble();
    const bool suppress = ctx->saved_data.at("suppress").toBool();
    auto [dp, dg, dA, dB] = bwd.call(at::mm(dY, s[2]), p, s[4], s[5], s[6], s[7], coeff, suppress);
    auto [dx, dW, dU, dVh] =
        layer_input_grads(ctx, dY, dp, s, [&] { return fwd.call(p, s[4], s[5], s[6], s[7], coeff, suppress); });
    const T db = ctx->saved_data.at("bias").toBool() && ctx->needs_input_grad(8) ? dY.sum(0) : T();
    return {dx, dW, dU, dVh, T(), dg, dA, dB, T(), T(), T(), db};
  }
};

struct LayerAblate : torch::autograd::Function<LayerAblate> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& W, const T& U, const T& Vh, const T& S,
                               const T& C, const T& a, double coeff, bool need_p, const OptT& bias) {
    ctx->save_for_backward({x, W, U, Vh, S, C, a});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    return layer_forward<LayerAblateSig>(ctx, "antipasto_ext::layer_ablate", need_p, x, W, bias, U, Vh, S, C, a,
                                         coeff);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto fwd = op<T(const T&, const T&, const T&, const T&, double)>("antipasto_ext::ablate_core");
    static auto bwd = op<T3(const T&, const T&, const T&, const T&, const T&, double)>(
        "antipasto_ext::ablate_core_backward");
    const auto s = ctx->get_saved_variables();
    const T p = ctx->saved_data.at("p").toTensor(), dY = grads[0];
    const double coeff = ctx->saved_data.at("coeff").toDouble();
    auto [dp, dC, da] = bwd.call(at::mm(dY, s[2]), p, s[4], s[5], s[6], coeff);
    auto [dx, dW, dU, dVh] = layer_input_grads(ctx, dY, dp, s, [&] { return fwd.call(p, s[4], s[5], s[6], coeff); });
    const T db = ctx->saved_data.at("bias").toBool() && ctx->needs_input_grad(7) ? dY.sum(0) : T();
    return {dx, dW, dU, dVh, T(), dC, da, T(), T(), db};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(antipasto_ext, Autograd, m) {
  m.impl("block_cayley", [](const T& t, int64_t bs, double a, double c) { return BlockCayley::apply(t, bs, a, c); });
  m.impl("gain_core", [](const T& p, const T& S, const T& g, double c, bool s) { return GainCore::apply(p, S, g, c, s); });
  m.impl("dplr_core", [](const T& p, const T& S, const T& g, const T& A, const T& B, double c, bool s) {
    return DplrCore::apply(p, S, g, A, B, c, s);
  });
  m.impl("rot_core", [](const T& p, const T& S, const T& d, const T& R, double c, int64_t side) {
    return RotCore::apply(p, S, d, R, c, side);
  });
  m.impl("ablate_core", [](const T& p, const T& S, const T& C, const T& a, double c) {
    return AblateCore::apply(p, S, C, a, c);
  });
  m.impl("layer_gain", [](const T& x, const T& W, const OptT& b, const T& U, const T& Vh, const T& S, const T& g,
                          double c, bool s, bool need_p) {
    return layer_dispatch<LayerGain, LayerGainSig>("antipasto_ext::layer_gain", {&x, &W, &U, &Vh, &g}, x, W, b, U, Vh,
                                                   S, g, c, s, need_p);
  });
  m.impl("layer_rot", [](const T& x, const T& W, const OptT& b, const T& U, const T& Vh, const T& S, const T& d,
                         const T& R, double c, int64_t side, bool need_p) {
    return layer_dispatch<LayerRot, LayerRotSig>("antipasto_ext::layer_rot", {&x, &W, &U, &Vh, &d, &R}, x, W, b, U, Vh,
                                                 S, d, R, c, side, need_p);
  });
  m.impl("layer_dplr", [](const T& x, const T& W, const OptT& b, const T& U, const T& Vh, const T& S, const T& g,
                          const T& A, const T& B, double c, bool s, bool need_p) {
    return layer_dispatch<LayerDplr, LayerDplrSig>("antipasto_ext::layer_dplr", {&x, &W, &U, &Vh, &g, &A, &B}, x, W, b,
                                                   U, Vh, S, g, A, B, c, s, need_p);
  });
  m.impl("layer_ablate", [](const T& x, const T& W, const OptT& b, const T& U, const T& Vh, const T& S, const T& C,
                            const T& a, double c, bool need_p) {
    return layer_dispatch<LayerAblate, LayerAblateSig>("antipasto_ext::layer_ablate", {&x, &W, &U, &Vh, &C, &a}, x, W,
                                                       b, U, Vh, S, C, a, c, need_p);
  });
}

}  // namespace ax
