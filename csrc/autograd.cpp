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
}

}  // namespace ax
