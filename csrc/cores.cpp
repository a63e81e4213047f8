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
}

const void* Packer::param(size_t i, const char* name, at::IntArrayRef shape, bool grad) {
  const at::Tensor& t = in_.params[i];
  check_float(t, name);
  TORCH_CHECK(t.sizes() == shape, "antipasto_ext: ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.device() == device_, "antipasto_ext: ", name, " is on ", t.device(), " but the activations are on ",
              device_);
  if (grad) out_.grads.emplace_back(i, t.numel());
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
  int64_t offset = 0;
  for (const auto& [i, entries] : packed.grads) {
    const at::Tensor& t = in.params[i];
    out[i] = dparams.narrow(0, offset, entries).view(t.sizes()).to(t.scalar_type(), false, true);
    offset += entries;
  }
  for (size_t i = 0; i < out.size(); ++i)
    if (!out[i].defined()) out[i] = at::zeros_like(in.params[i]);
  return out;
}

}  // namespace ax
