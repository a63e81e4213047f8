// Packing of each core (csrc/cores.h): one function per core, and the name table.
#include "csrc/cores.h"

#include <string>

#include "csrc/checks.h"

namespace ax {
namespace {

// Collects the accumulator copies and the gradient layout while a core's pack function checks its inputs.
class Packer {
 public:
  Packer(const CoreInputs& in, const at::Device& device, at::ScalarType acc) : in_(in), device_(device), acc_(acc) {
    out_.params.core = in.core;
    out_.params.r = in.S.size(0);
    out_.params.coeff = in.coeff;
    out_.params.S = keep(in.S);
  }
  int64_t r() const { return out_.params.r; }
  const at::Tensor& raw(size_t i) const { return in_.params[i]; }

  // Parameter i, called `name` in errors, must have `shape`; `grad`: the kernels write its gradient next.
  const void* param(size_t i, const char* name, at::IntArrayRef shape, bool grad = true) {
    const at::Tensor& t = in_.params[i];
    check_float(t, name);
    TORCH_CHECK(t.sizes() == shape, "antipasto_ext: ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.device() == device_, "antipasto_ext: ", name, " is on ", t.device(), " but the activations are on ",
                device_);
    if (grad) out_.grads.emplace_back(i, t.numel());
    return keep(t);
  }
  void count(size_t n, const char* names) {
    TORCH_CHECK(in_.params.size() == n, "antipasto_ext: the ", core_name(), " core takes ", n, " parameter(s) (",
                names, "), got ", in_.params.size());
  }
  const char* core_name() const {
    static const char* names[] = {"gain", "rot", "dplr", "ablate"};
    return names[int(in_.core)];
  }
  CoreParams& params() { return out_.params; }
  PackedCore done() { return std::move(out_); }

 private:
  const void* keep(const at::Tensor& t) {
    out_.keep.push_back(t.to(acc_).contiguous());
    return out_.keep.back().data_ptr();
  }
  const CoreInputs& in_;
  at::Device device_;
  at::ScalarType acc_;
  PackedCore out_;
};

void pack_gain(Packer& p, int64_t option) {
  p.count(1, "g");
  CoreParams& c = p.params();
  c.suppress_only = option != 0;
  c.g = p.param(0, "g", {p.r()});
}

void pack_rot(Packer& p, int64_t option) {
  p.count(2, "delta_s, R");
  CoreParams& c = p.params();
  TORCH_CHECK(option == kRotNone || option == kRotV || option == kRotU,
              "antipasto_ext: side must be 0 (none), 1 (V) or 2 (U), got ", option);
  c.side = int(option);
  c.g = p.param(0, "delta_s", {p.r()});
  if (c.side == kRotNone) return;
  const at::Tensor& R = p.raw(1);
  check_float(R, "R");
  const int64_t bs = R.dim() == 3 ? R.size(1) : 0;
  TORCH_CHECK(R.dim() == 3 && R.size(1) == R.size(2) && bs >= 2 && bs * R.size(0) == p.r(),
              "antipasto_ext: R must have shape (r / block_size, block_size, block_size) with r = ", p.r(), ", got ",
              R.sizes());
  c.bs = bs;
  c.R = p.param(1, "R", R.sizes());
}

void pack_dplr(Packer& p, int64_t option) {
  p.count(3, "g, A, B");
  CoreParams& c = p.params();
  const at::Tensor& A = p.raw(1);
  const int64_t r = p.r(), k = A.dim() == 2 ? A.size(0) : 0;
  TORCH_CHECK(k >= 1, "antipasto_ext: A must have shape (k, r) with k >= 1 and r = ", r, ", got ", A.sizes());
  c.suppress_only = option != 0;
  c.k = k;
  c.g = p.param(0, "g", {r});
  c.A = p.param(1, "A", {k, r});
  c.B = p.param(2, "B", {r, k});
}

void pack_ablate(Packer& p, int64_t option) {
  p.count(2, "C, a");
  TORCH_CHECK(option == 0, "antipasto_ext: the ablate core has no option, got ", option);
  CoreParams& c = p.params();
  const at::Tensor& C = p.raw(0);
  const int64_t r = p.r(), k = C.dim() == 2 ? C.size(1) : 0;
  TORCH_CHECK(k >= 1, "antipasto_ext: C must have shape (r, k) with k >= 1 and r = ", r, ", got ", C.sizes());
  c.k = k;
  c.A = p.param(0, "C", {r, k});
  c.a = p.param(1, "a", {k});
}

}  // namespace

Core core_named(c10::string_view name) {
  if (name == "gain") return Core::gain;
  if (name == "rot") return Core::rot;
  if (name == "dplr") return Core::dplr;
  TORCH_CHECK(name == "ablate", "antipasto_ext: core must be 'gain', 'rot', 'dplr' or 'ablate', got '",
              std::string(name), "'");
  return Core::ablate;
}

PackedCore pack_core(const CoreInputs& in, const at::Device& device, at::ScalarType acc) {
  check_float(in.S, "S");
  TORCH_CHECK(in.S.dim() == 1 && in.S.size(0) > 0, "antipasto_ext: S must be a non-empty 1-D tensor, got ",
              in.S.sizes());
  TORCH_CHECK(in.S.device() == device, "antipasto_ext: S is on ", in.S.device(), " but the activations are on ", device);
  TORCH_CHECK(std::isfinite(in.coeff), "antipasto_ext: coeff must be finite, got ", in.coeff);
  Packer p(in, device, acc);
  switch (in.core) {
    case Core::gain: pack_gain(p, in.option); break;
    case Core::rot: pack_rot(p, in.option); break;
    case Core::dplr: pack_dplr(p, in.option); break;
    case Core::ablate: pack_ablate(p, in.option); break;
  }
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
