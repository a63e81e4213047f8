// The registry of the cores' host sides (csrc/cores/core_host.h) and the packing entry points of csrc/cores.h.
#include "csrc/cores.h"

#include <array>
#include <cmath>
#include <string>

#include "csrc/checks.h"
#include "csrc/cores/core_host.h"

namespace ax {
namespace {

// Indexed by Core; an entry with no name is a core without a registered host side.
std::array<CoreHost, kCoreCount>& registry() {
  static std::array<CoreHost, kCoreCount> r{};
  return r;
}

std::string known_names() {
  std::string s;
  for (const CoreHost& h : registry())
    if (h.name) s += (s.empty() ? "'" : ", '") + std::string(h.name) + "'";
  return s;
}

}  // namespace

bool register_core(const CoreHost& host) {
  TORCH_CHECK(int(host.core) >= 0 && int(host.core) < kCoreCount && registry()[int(host.core)].name == nullptr,
              "antipasto_ext: core ", host.name, " registered twice or out of range (kCoreCount in api.h)");
  registry()[int(host.core)] = host;
  return true;
}

const CoreHost& core_host(Core c) {
  TORCH_CHECK(int(c) >= 0 && int(c) < kCoreCount && registry()[int(c)].name != nullptr, "antipasto_ext: core ", int(c),
              " has no host side (csrc/cores/*.cpp)");
  return registry()[int(c)];
}

const CoreHost& core_host(c10::string_view name) {
  for (const CoreHost& h : registry())
    if (h.name && name == h.name) return h;
  TORCH_CHECK(false, "antipasto_ext: core must be one of ", known_names(), ", got '", std::string(name), "'");
  return registry()[0];  // not reached
}

Core core_named(c10::string_view name) { return core_host(name).core; }

Packer::Packer(const CoreInputs& in, const at::Device& device, at::ScalarType acc)
    : in_(in), device_(device), acc_(acc) {
  out_.params.core = in.core;
  out_.params.r = in.S.size(0);
  out_.params.coeff = in.coeff;
  out_.params.S = keep(in.S);
  if (in.coeffs.has_value() && in.coeffs->defined()) {
    out_.params.entries = in.coeffs->numel();
    out_.params.coeffs = keep(*in.coeffs);
  }
  if (in.adapters.has_value() && in.adapters->defined()) {
    const at::Tensor& a = *in.adapters;
    TORCH_CHECK(out_.params.coeffs, "antipasto_ext: adapters needs coeffs (one coefficient per steering group)");
    TORCH_CHECK(a.scalar_type() == at::kLong && a.dim() == 1 && a.numel() == out_.params.entries,
                "antipasto_ext: adapters must be a 1-D int64 tensor of ", out_.params.entries,
                " indices (one per coeffs entry), got ", a.scalar_type(), " ", a.sizes());
    TORCH_CHECK(a.device() == device, "antipasto_ext: adapters is on ", a.device(), " but the activations are on ",
                device);
    TORCH_CHECK(!in.params.empty() && in.params[0].dim() >= 1 && in.params[0].size(0) >= 1,
                "antipasto_ext: a bank's parameters are stacked (n_adapters, ...)");
    out_.params.n_adapters = in.params[0].size(0);
    out_.keep.push_back(a.contiguous());
    out_.params.adapters = out_.keep.back().data_ptr<int64_t>();
  }
}

at::IntArrayRef Packer::shape(size_t i) const {
  const at::Tensor& t = in_.params[i];
  return banked() && t.dim() >= 1 ? t.sizes().slice(1) : t.sizes();
}

const void* Packer::param(size_t i, const char* name, at::IntArrayRef shape, bool per_group) {
  const at::Tensor& t = in_.params[i];
  check_float(t, name);
  std::vector<int64_t> want(shape.begin(), shape.end());
  if (banked() && !per_group) want.insert(want.begin(), out_.params.n_adapters);
  TORCH_CHECK(t.sizes() == at::IntArrayRef(want), "antipasto_ext: ", name, " must have shape ", at::IntArrayRef(want),
              banked() && !per_group ? " (stacked: one per adapter of the bank)" : "", ", got ", t.sizes());
  TORCH_CHECK(t.device() == device_, "antipasto_ext: ", name, " is on ", t.device(), " but the activations are on ",
              device_);
  out_.grads.push_back({i, c10::multiply_integers(shape), per_group});
  return keep(t);
}

void Packer::count(size_t n, const char* names) const {
  TORCH_CHECK(in_.params.size() == n, "antipasto_ext: the ", core_host(in_.core).name, " core takes ", n,
              " parameter(s) (", names, "), got ", in_.params.size());
}

const void* Packer::keep(const at::Tensor& t) {
  out_.keep.push_back(t.to(acc_).contiguous());
  return out_.keep.back().data_ptr();
}

PackedCore pack_core(const CoreInputs& in, const at::Device& device, at::ScalarType acc, int64_t n) {
  check_float(in.S, "S");
  if (in.coeffs.has_value() && in.coeffs->defined()) {
    const at::Tensor& c = *in.coeffs;
    check_float(c, "coeffs");
    TORCH_CHECK(c.dim() == 1 && c.numel() > 0, "antipasto_ext: coeffs must be a non-empty 1-D tensor, got ", c.sizes());
    TORCH_CHECK(c.device() == device, "antipasto_ext: coeffs is on ", c.device(), " but the activations are on ",
                device);
    TORCH_CHECK(n % c.numel() == 0, "antipasto_ext: coeffs has ", c.numel(), " entries, which do not split the ", n,
                " rows into equal groups");
  }
  TORCH_CHECK(in.S.dim() == 1 && in.S.size(0) > 0, "antipasto_ext: S must be a non-empty 1-D tensor, got ",
              in.S.sizes());
  TORCH_CHECK(in.S.device() == device, "antipasto_ext: S is on ", in.S.device(), " but the activations are on ", device);
  TORCH_CHECK(std::isfinite(in.coeff), "antipasto_ext: coeff must be finite, got ", in.coeff);
  Packer p(in, device, acc);
  core_host(in.core).pack(p, in.option);
  return p.done();
}

std::vector<at::Tensor> unpack_grads(const CoreInputs& in, const PackedCore& packed, const at::Tensor& dparams) {
  std::vector<at::Tensor> out(in.params.size());
  const CoreParams& c = packed.params;
  const int64_t n_shared = core_partials(c) - core_entry_partials(c);
  // dparams: (n_adapters, n_shared) adapter by adapter, then the per-group gradients
  const at::Tensor shared = dparams.narrow(0, 0, c.n_adapters * n_shared).view({c.n_adapters, n_shared});
  const at::Tensor per_group = dparams.narrow(0, c.n_adapters * n_shared, dparams.numel() - c.n_adapters * n_shared);
  int64_t offset = 0;
  for (const PackedCore::Grad& g : packed.grads) {
    const at::Tensor& t = in.params[g.param];
    const at::Tensor d = g.per_group ? per_group : shared.narrow(1, offset, g.count);
    if (!g.per_group) offset += g.count;
    out[g.param] = d.reshape(t.sizes()).to(t.scalar_type(), false, true);
  }
  for (size_t i = 0; i < out.size(); ++i)
    if (!out[i].defined()) out[i] = at::zeros_like(in.params[i]);
  return out;
}

}  // namespace ax
