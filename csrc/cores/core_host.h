// The host side of each r-space core, one file per core (csrc/cores/<core>.cpp): how the ops' tensors pack into its
// CoreParams (with the checks that name a bad argument) and its C++ CPU kernels. Each file registers itself at
// load time (AX_REGISTER_CORE); the glue (csrc/cores.h) and the CPU kernel set (csrc/cpu/kernels.cpp) find a core
// here by its Core value or its name, so a new core adds its file and touches no list.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "csrc/cores.h"
#include "csrc/kernels/api.h"

namespace ax {

// Collects the accumulator copies and the gradient layout while a core's pack function checks its inputs.
class Packer {
 public:
  Packer(const CoreInputs& in, const at::Device& device, at::ScalarType acc);
  int64_t r() const { return out_.params.r; }
  // Parameter i as passed, unchecked (to read a shape off it).
  const at::Tensor& raw(size_t i) const { return in_.params[i]; }
  // Parameter i's shape without the leading bank dimension (a stacked parameter of a bank).
  at::IntArrayRef shape(size_t i) const;
  // Parameter i, called `name` in errors, must have `shape` ((n_adapters, ...shape) in a bank, unless per_group);
  // its gradient comes next in dparams; per_group: one copy per steering group (rot's steered R). Returns its
  // accumulator copy's data.
  const void* param(size_t i, const char* name, at::IntArrayRef shape, bool per_group = false);
  bool banked() const { return out_.params.adapters != nullptr; }
  // The core takes `n` parameters, called `names` in the error.
  void count(size_t n, const char* names) const;
  CoreParams& params() { return out_.params; }
  PackedCore done() { return std::move(out_); }

 private:
  const void* keep(const at::Tensor& t);
  const CoreInputs& in_;
  at::Device device_;
  at::ScalarType acc_;
  PackedCore out_;
};

struct CoreHost {
  Core core;
  const char* name;                                   // as the ops name it
  void (*pack)(Packer& p, int64_t option);            // fills p.params() from the parameters (and the option)
  void (*cpu_forward)(const CoreCall& c);             // the C++ CPU kernels (any n, 0 included)
  void (*cpu_backward)(const CoreCall& c);
};

// Registers a core's host side (at load time, from its file); returns true.
bool register_core(const CoreHost& host);
// The registered core `c`, or the one called `name`; an error naming it when there is none.
const CoreHost& core_host(Core c);
const CoreHost& core_host(c10::string_view name);

#define AX_REGISTER_CORE(...) \
  static const bool ax_core_registered = ::ax::register_core(::ax::CoreHost{__VA_ARGS__})

}  // namespace ax
