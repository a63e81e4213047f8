// The r-space cores as the ops take them, and their packing into the kernels' CoreParams (csrc/kernels/api.h).
//
// Every core op and layer op carries a core as (core, S, params, coeff, option, coeffs): `core` names it, `params`
// is its list of parameters in a fixed order, `option` its one integer setting, and `coeffs` (optional) steers it:
// a 1-D tensor of G coefficients for G equal groups of consecutive rows (row i of n uses coeffs[i / (n / G)]),
// `coeff` unused then; rot's R is then one rotation set per group, (G, r / bs, bs, bs). With `adapters` too (G
// int64 indices, a bank) every other parameter is stacked, (n_adapters, ...its shape), group e running adapter
// adapters[e], and its gradient comes per adapter.
//
//   core     params               option           dparams (core_partials)
//   gain     [g]                  suppress_only    dg
//   rot      [delta_s, R]         side (0 none,    d delta_s | dR (sides V, U)
//                                 1 V, 2 U)
//   dplr     [g, A, B]            suppress_only    dg | dA | dB
//   ablate   [C, a]               0                dC | da
//
// Each core's host side is one file, csrc/cores/<core>.cpp (csrc/cores/core_host.h): its packing, which checks
// the parameters' shapes (naming them) and device and lists the gradients the kernels write, in dparams order;
// and its C++ CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "csrc/kernels/api.h"

namespace ax {

struct CoreInputs {
  Core core;
  const at::Tensor& S;
  at::TensorList params;
  double coeff;
  int64_t option;
  const c10::optional<at::Tensor>& coeffs;
  const c10::optional<at::Tensor>& adapters;
};

// The core named `name` ("gain", "rot", "dplr", "ablate"); an error naming it otherwise.
Core core_named(c10::string_view name);

struct PackedCore {
  CoreParams params;        // pointers into `keep`
  std::vector<at::Tensor> keep;  // S and the parameters as contiguous accumulators, the adapter indices
  struct Grad {
    size_t param;    // its index in the parameters
    int64_t count;   // dparams entries per adapter (per group for a per-group parameter)
    bool per_group;  // rot's steered R
  };
  std::vector<Grad> grads;  // the parameters the kernels write gradients for, in dparams order
};

// Checks the core's parameters against S (shapes, floating dtypes, all on `device`) and packs them as
// contiguous `acc` arrays (float64 for float64 activations, float otherwise; float for the fused projection); with
// coeffs, checks that the n rows split into its groups.
PackedCore pack_core(const CoreInputs& in, const at::Device& device, at::ScalarType acc, int64_t n);

// The parameters' gradients from the kernels' dparams (core_dparams_elems accumulators), each in its parameter's
// shape and dtype; zeros for a parameter the core does not use (rot's R without a rotated side).
std::vector<at::Tensor> unpack_grads(const CoreInputs& in, const PackedCore& packed, const at::Tensor& dparams);

}  // namespace ax
