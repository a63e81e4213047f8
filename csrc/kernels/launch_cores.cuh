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
  const bool lowrank = k.core == Core::dplr || k.core == Core::ablate;
  if (k.r <= 0 || k.r > (int64_t(1) << 20) || (lowrank && (k.k < 1 || k.k > k.r)) || c.n < 0)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": unsupported sizes r = " + std::to_string(k.r) +
                                ", k = " + std::to_string(k.k) + ", n = " + std::to_string(c.n));
  if (k.core == Core::rot) {
    if (k.side != kRotNone && k.side != kRotV && k.side != kRotU)
      throw std::invalid_argument(std::string("antipasto_ext ") + op + ": side must be 0, 1 or 2, got " +
                                  std::to_string(k.side));
    if (k.side != kRotNone && (k.bs < 1 || k.r % k.bs != 0))
      throw std::invalid_argument(std::string("antipasto_ext ") + op + ": block size " + std::to_string(k.bs) +
                                  " does not divide r = " + std::to_string(k.r));
  }
}

// Row tile of a CTA: `fixed` accumulators always staged, `params` staged when they leave room for
// 8 rows (else read from global), `per_row` accumulators per tile row; at most max_rows rows.
struct TilePlan {
  int rows;
  bool stage;
  size_t smem;
};
inline TilePlan plan_tile(const char* op, int64_t r, int64_t fixed, int64_t params, int64_t per_row,
                          size_t acc_bytes, int64_t max_rows) {
  const int64_t budget = int64_t(kCoreSmemBudget / acc_bytes);
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>(max_rows, kCoreMaxTileRows));
  const bool stage = fixed + params + per_row * std::min<int64_t>(want, 8) <= budget;
  const int64_t avail = budget - fixed - (stage ? params : 0);
  const int64_t rows = per_row > 0 ? std::min(want, avail / per_row) : want;
  if (avail < 0 || rows < 1)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": r = " + std::to_string(r) +
                                " is too wide for one row tile in " + std::to_string(kCoreSmemBudget) +
                                " bytes of shared memory");
  return TilePlan{int(rows), stage, size_t(fixed + (stage ? params : 0) + rows * per_row) * acc_bytes};
}

// The tile of a core's forward (max_rows = n) or backward (max_rows = the reduction chunk).
inline TilePlan core_tile(const char* op, const CoreParams& k, bool backward, size_t acc_bytes, int64_t max_rows) {
  const int64_t r = k.r, kk = k.k;
  switch (k.core) {
    case Core::gain: return plan_tile(op, r, r, 0, 0, acc_bytes, 1);  // s (r) in shared memory
    case Core::rot:
      return k.side == kRotNone ? plan_tile(op, r, r, 0, 0, acc_bytes, 1)
                                : plan_tile(op, r, r, r * k.bs, backward ? 3 * r : r, acc_bytes, max_rows);
    case Core::dplr: return plan_tile(op, r, r, 2 * kk * r, backward ? 2 * r + 2 * kk : r + kk, acc_bytes, max_rows);
    case Core::ablate:
      return plan_tile(op, r, r + kk, r * kk, backward ? 2 * r + 2 * kk : r + kk, acc_bytes, max_rows);
  }
  throw std::invalid_argument(std::string("antipasto_ext ") + op + ": unknown core");
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
  const CoreParams& k = c.core;
  const int64_t n = c.n, r = k.r;
  const TilePlan pl = core_tile("core_forward", k, false, sizeof(acc_t), n);
  poison<T>(c.h, n * r);
  if (n <= 0) return;
  const T* p = static_cast<const T*>(c.p);
  T* h = static_cast<T*>(c.h);
  const acc_t *S = static_cast<const acc_t*>(k.S), *g = static_cast<const acc_t*>(k.g);
  const acc_t *A = static_cast<const acc_t*>(k.A), *B = static_cast<const acc_t*>(k.B);
  const acc_t coeff = acc_t(k.coeff);
  if (k.core == Core::gain || (k.core == Core::rot && k.side == kRotNone)) {
    const int rows = int(std::max<int64_t>(1, 8192 / r));
    const int mode = k.core == Core::gain ? kScaleGain : kScaleAdditive;
    AX_LAUNCH((diag_forward_kernel<T>), dim3(blocks_for(n, rows)), dim3(kCoreThreads), pl.smem, st, p, n, int(r), rows,
              S, g, coeff, k.suppress_only, mode, h);
  } else if (k.core == Core::rot) {
    AX_LAUNCH((rot_forward_kernel<T>), dim3(blocks_for(n, pl.rows)), dim3(kCoreThreads), pl.smem, st, p, n, int(r),
              int(k.bs), k.side, pl.rows, pl.stage, S, g, static_cast<const acc_t*>(k.R), coeff, h);
  } else if (k.core == Core::dplr) {
    AX_LAUNCH((dplr_forward_kernel<T>), dim3(blocks_for(n, pl.rows)), dim3(kCoreThreads), pl.smem, st, p, n, int(r),
              int(k.k), pl.rows, pl.stage, S, g, A, B, coeff, k.suppress_only, h);
  } else {
    AX_LAUNCH((ablate_forward_kernel<T>), dim3(blocks_for(n, pl.rows)), dim3(kCoreThreads), pl.smem, st, p, n, int(r),
              int(k.k), pl.rows, pl.stage, S, A, static_cast<const acc_t*>(k.a), coeff, h);
  }
  AX_CHECK_LAUNCH();
}

// First stage: per-CTA partials of the parameter gradients (and dp); second stage: their sum with the
// chain-rule factor of entries < r (d s / d g for the gain cores, coeff for rot's delta_s).
template <typename T>
void core_backward_typed(const CoreCall& c, ax::stream_t st) {
  using acc_t = typename acc_of<T>::type;
  const CoreParams& k = c.core;
  const int64_t n = c.n, r = k.r, n_ctas = core_chunks(n), chunk = core_rows_per_chunk(n), n_part = core_partials(k);
  const bool diag = k.core == Core::gain || (k.core == Core::rot && k.side == kRotNone);
  const TilePlan pl = n_ctas > 0 && !diag ? core_tile("core_backward", k, true, sizeof(acc_t), chunk) : TilePlan{0, false, 0};
  poison<T>(c.dp, n * r);
  poison<acc_t>(c.workspace, n_ctas * n_part);
  poison<acc_t>(c.dparams, n_part);
  const T *dh = static_cast<const T*>(c.grad_h), *p = static_cast<const T*>(c.p);
  T* dp = static_cast<T*>(c.dp);
  acc_t* ws = static_cast<acc_t*>(c.workspace);
  const acc_t *S = static_cast<const acc_t*>(k.S), *g = static_cast<const acc_t*>(k.g);
  const acc_t *A = static_cast<const acc_t*>(k.A), *B = static_cast<const acc_t*>(k.B);
  const acc_t coeff = acc_t(k.coeff);
  const dim3 grid(unsigned(n_ctas > 0 ? n_ctas : 1));
  if (n_ctas > 0) {
    if (diag) {
      const int threads = int(std::min<int64_t>(kCoreThreads, (r + 31) / 32 * 32));
      const int mode = k.core == Core::gain ? kScaleGain : kScaleAdditive;
      AX_LAUNCH((diag_backward_kernel<T>), grid, dim3(threads), 0, st, dh, p, n, int(r), chunk, S, g, coeff,
                k.suppress_only, mode, dp, ws);
    } else if (k.core == Core::rot) {
      AX_LAUNCH((rot_backward_kernel<T>), grid, dim3(kCoreThreads), pl.smem, st, dh, p, n, int(r), int(k.bs), k.side,
                chunk, pl.rows, pl.stage, S, g, static_cast<const acc_t*>(k.R), coeff, dp, ws);
    } else if (k.core == Core::dplr) {
      AX_LAUNCH((dplr_backward_kernel<T>), grid, dim3(kCoreThreads), pl.smem, st, dh, p, n, int(r), int(k.k), chunk,
                pl.rows, pl.stage, S, g, A, B, coeff, k.suppress_only, dp, ws);
    } else {
      AX_LAUNCH((ablate_backward_kernel<T>), grid, dim3(kCoreThreads), pl.smem, st, dh, p, n, int(r), int(k.k), chunk,
                pl.rows, pl.stage, S, A, static_cast<const acc_t*>(k.a), coeff, dp, ws);
    }
    AX_CHECK_LAUNCH();
  }
  const int final_mode = k.core == Core::gain || k.core == Core::dplr ? kFinalGain
                         : k.core == Core::rot                        ? kFinalCoeff
                                                                      : kFinalNone;
  launch_reduce<acc_t>(ws, n_ctas, n_part, final_mode, r, S, k.core == Core::ablate ? S : g, coeff, k.suppress_only,
                       static_cast<acc_t*>(c.dparams), st);
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
