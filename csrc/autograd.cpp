// Autograd of the forward ops, in C++ (Autograd dispatch key, any device): each forward op saves its
// inputs and its backward calls the matching *_backward op. Kept out of Python so a layer call pays
// no Python round trip in forward or backward (the ops are tiny; the overhead would dominate).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

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

// ---------------------------------------------------------------------------- projection ops
// One node per layer for x -> h: forward runs the projection op with need_p (p is saved, not returned
// to the caller's graph), backward runs the core's *_backward op on p, then dx = dp Vh (and dVh =
// dp^T x), each only when asked for. The second output (p) is never differentiable.

bool records(std::initializer_list<const T*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const T* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

// {dx, dVh} from dp.
std::pair<T, T> projection_input_grads(AutogradContext* ctx, const T& dp, const T& x, const T& Vh) {
  const T dx = ctx->needs_input_grad(0) ? at::mm(dp, Vh) : T();
  const T dVh = ctx->needs_input_grad(1) ? at::mm(dp.t(), x) : T();
  return {dx, dVh};
}

// Calls Fn::apply(args...) when autograd records, else the op below autograd; returns (h, p).
template <class Fn, class Sig, class... Args>
T2 project_dispatch(const char* name, std::initializer_list<const T*> inputs, Args&&... args) {
  if (records(inputs)) {
    auto out = Fn::apply(std::forward<Args>(args)...);
    return {out[0], out[1]};
  }
  static auto fwd = op<Sig>(name);
  at::AutoDispatchBelowADInplaceOrView guard;
  return fwd.call(std::forward<Args>(args)...);
}

// Runs the op with need_p, keeps p for backward and hands the caller p only if it asked.
template <class Sig, class... Args>
variable_list project_forward(AutogradContext* ctx, const char* name, bool need_p, Args&&... args) {
  static auto fwd = op<Sig>(name);
  at::AutoDispatchBelowADInplaceOrView guard;
  auto [h, p] = fwd.call(std::forward<Args>(args)..., true);
  ctx->saved_data["p"] = p;
  T p_out = need_p ? p : p.new_empty({0, p.size(1)});
  ctx->mark_non_differentiable({p_out});
  return {h, p_out};
}

using ProjGainSig = T2(const T&, const T&, const T&, const T&, double, bool, bool);
using ProjRotSig = T2(const T&, const T&, const T&, const T&, const T&, double, int64_t, bool);
using ProjDplrSig = T2(const T&, const T&, const T&, const T&, const T&, const T&, double, bool, bool);
using ProjAblateSig = T2(const T&, const T&, const T&, const T&, const T&, double, bool);

struct ProjectGain : torch::autograd::Function<ProjectGain> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& Vh, const T& S, const T& g, double coeff,
                               bool suppress, bool need_p) {
    ctx->save_for_backward({x, Vh, S, g});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["suppress"] = suppress;
    return project_forward<ProjGainSig>(ctx, "antipasto_ext::project_gain", need_p, x, Vh, S, g, coeff, suppress);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T2(const T&, const T&, const T&, const T&, double, bool)>("antipasto_ext::gain_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dg] = bwd.call(grads[0], ctx->saved_data.at("p").toTensor(), s[2], s[3],
                             ctx->saved_data.at("coeff").toDouble(), ctx->saved_data.at("suppress").toBool());
    auto [dx, dVh] = projection_input_grads(ctx, dp, s[0], s[1]);
    return {dx, dVh, T(), dg, T(), T(), T()};
  }
};

struct ProjectRot : torch::autograd::Function<ProjectRot> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& Vh, const T& S, const T& delta_s,
                               const T& R, double coeff, int64_t side, bool need_p) {
    ctx->save_for_backward({x, Vh, S, delta_s, R});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["side"] = side;
    return project_forward<ProjRotSig>(ctx, "antipasto_ext::project_rot", need_p, x, Vh, S, delta_s, R, coeff, side);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T3(const T&, const T&, const T&, const T&, const T&, double, int64_t)>(
        "antipasto_ext::rot_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dds, dR] = bwd.call(grads[0], ctx->saved_data.at("p").toTensor(), s[2], s[3], s[4],
                                  ctx->saved_data.at("coeff").toDouble(), ctx->saved_data.at("side").toInt());
    auto [dx, dVh] = projection_input_grads(ctx, dp, s[0], s[1]);
    return {dx, dVh, T(), dds, ctx->needs_input_grad(4) ? dR : T(), T(), T(), T()};
  }
};

struct ProjectDplr : torch::autograd::Function<ProjectDplr> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& Vh, const T& S, const T& g, const T& A,
                               const T& B, double coeff, bool suppress, bool need_p) {
    ctx->save_for_backward({x, Vh, S, g, A, B});
    ctx->saved_data["coeff"] = coeff;
    ctx->saved_data["suppress"] = suppress;
    return project_forward<ProjDplrSig>(ctx, "antipasto_ext::project_dplr", need_p, x, Vh, S, g, A, B, coeff,
                                        suppress);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T4(const T&, const T&, const T&, const T&, const T&, const T&, double, bool)>(
        "antipasto_ext::dplr_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dg, dA, dB] = bwd.call(grads[0], ctx->saved_data.at("p").toTensor(), s[2], s[3], s[4], s[5],
                                     ctx->saved_data.at("coeff").toDouble(), ctx->saved_data.at("suppress").toBool());
    auto [dx, dVh] = projection_input_grads(ctx, dp, s[0], s[1]);
    return {dx, dVh, T(), dg, dA, dB, T(), T(), T()};
  }
};

struct ProjectAblate : torch::autograd::Function<ProjectAblate> {
  static variable_list forward(AutogradContext* ctx, const T& x, const T& Vh, const T& S, const T& C, const T& a,
                               double coeff, bool need_p) {
    ctx->save_for_backward({x, Vh, S, C, a});
    ctx->saved_data["coeff"] = coeff;
    return project_forward<ProjAblateSig>(ctx, "antipasto_ext::project_ablate", need_p, x, Vh, S, C, a, coeff);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<T3(const T&, const T&, const T&, const T&, const T&, double)>(
        "antipasto_ext::ablate_core_backward");
    const auto s = ctx->get_saved_variables();
    auto [dp, dC, da] = bwd.call(grads[0], ctx->saved_data.at("p").toTensor(), s[2], s[3], s[4],
                                 ctx->saved_data.at("coeff").toDouble());
    auto [dx, dVh] = projection_input_grads(ctx, dp, s[0], s[1]);
    return {dx, dVh, T(), dC, da, T(), T()};
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
  m.impl("project_gain", [](const T& x, const T& Vh, const T& S, const T& g, double c, bool s, bool need_p) {
    return project_dispatch<ProjectGain, ProjGainSig>("antipasto_ext::project_gain", {&x, &Vh, &g}, x, Vh, S, g, c, s,
                                                      need_p);
  });
  m.impl("project_rot", [](const T& x, const T& Vh, const T& S, const T& d, const T& R, double c, int64_t side,
                           bool need_p) {
    return project_dispatch<ProjectRot, ProjRotSig>("antipasto_ext::project_rot", {&x, &Vh, &d, &R}, x, Vh, S, d, R,
                                                    c, side, need_p);
  });
  m.impl("project_dplr", [](const T& x, const T& Vh, const T& S, const T& g, const T& A, const T& B, double c, bool s,
                            bool need_p) {
    return project_dispatch<ProjectDplr, ProjDplrSig>("antipasto_ext::project_dplr", {&x, &Vh, &g, &A, &B}, x, Vh, S,
                                                      g, A, B, c, s, need_p);
  });
  m.impl("project_ablate", [](const T& x, const T& Vh, const T& S, const T& C, const T& a, double c, bool need_p) {
    return project_dispatch<ProjectAblate, ProjAblateSig>("antipasto_ext::project_ablate", {&x, &Vh, &C, &a}, x, Vh,
                                                          S, C, a, c, need_p);
  });
}

}  // namespace ax
