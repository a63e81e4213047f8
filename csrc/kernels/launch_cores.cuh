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
}

// Second stage of every backward: dparams = sum of the CTA partials (in CTA order) * factor.
template <typename acc_t>
void launch_reduce(const acc_t* ws, int64_t n_ctas, int64_t n_part, int mode, int64_t r, const acc_t* S,
                   const acc_t* g, acc_t coeff, bool suppress_only, acc_t* out, ax::stream_t st) {
  if (n_part <= 0) return;
  AX_LAUNCH((reduce_partials_kernel<acc_t>), dim3(blocks_for(n_part, kCoreThreads)), dim3(kCoreThreads), 0, st, ws,
            n_ctas, n_part, mode, int(r), S, g, coeff, suppress_only, out);
  AX_CHECK_LAUNCH();
}

template <typename T>
void core_forward_typed(const CoreCall& c, ax::stream_t st) {
  using acc_t = typename acc_of<T>::type;
  with_core(c.core.core, [&](auto core) {
    using L = CoreLaunch<decltype(core)::value>;
    const TilePlan pl = L::tile(c.core, false, sizeof(acc_t), c.n);
    poison<T>(c.h, c.n * c.core.r);
    if (c.n > 0) L::template forward<T>(c, pl, st);
  });
}

// First stage: per-CTA partials of the parameter gradients (and dp); second stage: their sum with the
// chain-rule factor of entries < r (d s / d g for the gain cores, coeff for rot's delta_s).
template <typename T>
void core_backward_typed(const CoreCall& c, ax::stream_t st) {
  using acc_t = typename acc_of<T>::type;
  const CoreParams& k = c.core;
  const int64_t n = c.n, n_ctas = core_chunks(n), chunk = core_rows_per_chunk(n), n_part = core_partials(k);
  with_core(k.core, [&](auto core) {
    using L = CoreLaunch<decltype(core)::value>;
    const TilePlan pl = n_ctas > 0 ? L::tile(k, true, sizeof(acc_t), chunk) : TilePlan{0, false, 0};
    poison<T>(c.dp, n * k.r);
    poison<acc_t>(c.workspace, n_ctas * n_part);
    poison<acc_t>(c.dparams, n_part);
    if (n_ctas > 0) L::template backward<T>(c, pl, chunk, st);
    launch_reduce<acc_t>(static_cast<const acc_t*>(c.workspace), n_ctas, n_part, L::final_mode, k.r,
                         static_cast<const acc_t*>(k.S), static_cast<const acc_t*>(k.g ? k.g : k.S), acc_t(k.coeff),
                         k.suppress_only, static_cast<acc_t*>(c.dparams), st);
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
