// Host launchers of the r-space core kernels (csrc/kernels/cores.cuh): core_forward and core_backward of
// the kernel API (csrc/kernels/api.h) in namespace ax::AX_KERNEL_NS. Include once per kernel set (through
// csrc/kernels/launchers.cuh, or alone in a test of the cores). Torch-free.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "csrc/kernels/api.h"
#include "csrc/kernels/cores.cuh"
#include "csrc/kernels/launch_common.cuh"

namespace ax {
namespace AX_KERNEL_NS {

namespace kern {

inline void check_core(const char* op, const CoreCall& c) {
  const CoreParams& k = c.core;
  if (int(k.core) < 0 || int(k.core) >= kCoreCount)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": unknown core " + std::to_string(int(k.core)));
  if (k.r <= 0 || k.r > (int64_t(1) << 20) || k.k < 0 || k.k > k.r || c.n < 0)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": unsupported sizes r = " + std::to_string(k.r) +
                                ", k = " + std::to_string(k.k) + ", n = " + std::to_string(c.n));
  if (!steering_fits(c.n, k))
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": " + std::to_string(c.n) +
                                " rows do not split into " + std::to_string(k.entries) + " steering groups");
  if (!bank_fits(k))
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": a bank of " + std::to_string(k.n_adapters) +
                                " adapters needs one adapter index and coefficient per steering group");
}

// Second stage of every backward: dparams from the CTA partials (api.h's reduction, reduce_partials_kernel).
template <typename acc_t>
void launch_reduce(const CoreParams& k, const acc_t* ws, int64_t per_entry, int mode, acc_t* out, ax::stream_t st) {
  const int64_t n_out = core_dparams_elems(k);
  if (n_out <= 0) return;
  AX_LAUNCH((reduce_partials_kernel<acc_t>), dim3(blocks_for(n_out, kCoreThreads)), dim3(kCoreThreads), 0, st, ws,
            k.entries, per_entry, core_partials(k), core_entry_partials(k), mode, int(k.r),
            static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g ? k.g : k.S),
            static_cast<const acc_t*>(k.coeffs), acc_t(k.coeff), k.adapters, k.n_adapters, k.suppress_only, out);
  AX_CHECK_LAUNCH();
}

template <typename T>
void core_forward_typed(const CoreCall& c, ax::stream_t st) {
  using acc_t = typename acc_of<T>::type;
  with_core(c.core.core, [&](auto core) {
    using L = CoreLaunch<decltype(core)::value>;
    const TilePlan pl = L::tile(c.core, false, sizeof(acc_t), core_entry_rows(c.n, c.core));
    poison<T>(c.h, c.n * c.core.r);
    if (c.n > 0) L::template forward<T>(c, pl, st);
  });
}

// First stage: per-CTA partials of the parameter gradients (and dp); second stage: dparams from them, with the
// chain-rule factor of entries < r (d s / d g for the gain cores, coeff for rot's delta_s).
template <typename T>
void core_backward_typed(const CoreCall& c, ax::stream_t st) {
  using acc_t = typename acc_of<T>::type;
  const CoreParams& k = c.core;
  const int64_t n = c.n, rows = core_entry_rows(n, k), n_ctas = core_chunks(n, k), chunk = core_rows_per_chunk(rows);
  with_core(k.core, [&](auto core) {
    using L = CoreLaunch<decltype(core)::value>;
    const TilePlan pl = n_ctas > 0 ? L::tile(k, true, sizeof(acc_t), chunk) : TilePlan{0, false, 0};
    poison<T>(c.dp, n * k.r);
    poison<acc_t>(c.workspace, core_workspace_elems(n, k));
    poison<acc_t>(c.dparams, core_dparams_elems(k));
    if (n_ctas > 0) L::template backward<T>(c, pl, chunk, st);
    launch_reduce<acc_t>(k, static_cast<const acc_t*>(c.workspace), core_chunks_per_entry(rows), L::final_mode,
                         static_cast<acc_t*>(c.dparams), st);
  });
}

}  // namespace kern

void core_forward(const CoreCall& c, void* stream) {
  kern::check_core("core_forward", c);
  kern::dispatch_dtype(c.dtype, [&](auto tag) { kern::core_forward_typed<decltype(tag)>(c, kern::as_stream(stream)); });
}

void core_backward(const CoreCall& c, void* stream) {
  kern::check_core("core_backward", c);
  kern::dispatch_dtype(c.dtype, [&](auto tag) { kern::core_backward_typed<decltype(tag)>(c, kern::as_stream(stream)); });
}

}  // namespace AX_KERNEL_NS
}  // namespace ax
