// Host launchers of the kernel family: the definitions of the functions declared in
// csrc/kernels/api_decls.inc, in namespace ax::AX_KERNEL_NS (cuda_impl under nvcc, emu_impl under
// the CPU emulation). Include exactly once per backend, from csrc/cuda/kernels.cu or
// csrc/emulated/kernels.cpp. Torch-free.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "csrc/kernels/api.h"
#include "csrc/kernels/cayley.cuh"
#include "csrc/kernels/cores.cuh"
#include "csrc/kernels/kernel_ns.h"
#include "csrc/kernels/project.cuh"

namespace ax {
namespace AX_KERNEL_NS {

namespace kern {

inline ax::stream_t as_stream(void* s) { return static_cast<ax::stream_t>(s); }

// Outputs and workspaces of a call are poisoned before its launches (emulation only: ax::poison_output).
template <typename E>
void poison(void* p, int64_t n) {
  if (p && n > 0) ax::poison_output(p, size_t(n) * sizeof(E));
}
template <typename T, typename acc_t>
void poison_backward(void* dp, int64_t n_dp, void* ws, int64_t n_ws, void* dparams, int64_t n_part) {
  poison<T>(dp, n_dp);
  poison<acc_t>(ws, n_ws);
  poison<acc_t>(dparams, n_part);
}

// Calls fn(T{}) with T the activation type of `d`.
template <typename Fn>
void dispatch_dtype(DType d, Fn&& fn) {
  switch (d) {
    case DType::f32: fn(float{}); return;
    case DType::f64: fn(double{}); return;
    case DType::f16: fn(__half{}); return;
    case DType::bf16: fn(__nv_bfloat16{}); return;
  }
  throw std::invalid_argument("antipasto_ext kernels: unknown dtype code " + std::to_string(int(d)));
}

inline void check_width(const char* op, int64_t r, int64_t k) {
  if (r <= 0 || r > (int64_t(1) << 20) || k < 0 || k > r)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": unsupported sizes r = " + std::to_string(r) +
                                ", k = " + std::to_string(k));
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
void launch_diag_forward(const void* p, int64_t n, int64_t r, const void* S, const void* x, double coeff,
                         bool suppress_only, int mode, void* h, ax::stream_t st) {
  using acc_t = typename acc_of<T>::type;
  if (n <= 0) return;
  const TilePlan pl = plan_tile("gain_core / rot_core", r, r, 0, 0, sizeof(acc_t), 1);  // s (r) in shared memory
  poison<T>(h, n * r);
  const int rows = int(std::max<int64_t>(1, 8192 / r));
  AX_LAUNCH((diag_forward_kernel<T>), dim3(blocks_for(n, rows)), dim3(kCoreThreads), pl.smem, st,
            static_cast<const T*>(p), n, int(r), rows, static_cast<const acc_t*>(S), static_cast<const acc_t*>(x),
            acc_t(coeff), suppress_only, mode, static_cast<T*>(h));
  AX_CHECK_LAUNCH();
}

template <typename T>
void launch_diag_backward(const void* dh, const void* p, int64_t n, int64_t r, const void* S, const void* x,
                          double coeff, bool suppress_only, int mode, int final_mode, void* dp, void* dparams,
                          void* workspace, ax::stream_t st) {
  using acc_t = typename acc_of<T>::type;
  const int64_t n_ctas = core_partial_ctas(n);
  acc_t* ws = static_cast<acc_t*>(workspace);
  poison_backward<T, acc_t>(dp, n * r, ws, n_ctas * r, dparams, r);
  if (n_ctas > 0) {
    const int threads = int(std::min<int64_t>(kCoreThreads, (r + 31) / 32 * 32));
    AX_LAUNCH((diag_backward_kernel<T>), dim3(unsigned(n_ctas)), dim3(threads), 0, st, static_cast<const T*>(dh),
              static_cast<const T*>(p), n, int(r), core_rows_per_cta(n), static_cast<const acc_t*>(S),
              static_cast<const acc_t*>(x), acc_t(coeff), suppress_only, mode, static_cast<T*>(dp), ws);
    AX_CHECK_LAUNCH();
  }
  launch_reduce<acc_t>(ws, n_ctas, r, final_mode, r, static_cast<const acc_t*>(S), static_cast<const acc_t*>(x),
                       acc_t(coeff), suppress_only, static_cast<acc_t*>(dparams), st);
}

}  // namespace kern

// ============================================================================== API definitions

const char* backend_name() { return AX_EMULATION ? "cuda-emulated" : "cuda"; }

void block_cayley_forward(bool f64, const void* t, int64_t n_blocks, int64_t bs, double a_lim, double coeff, void* R,
                          void* stream) {
  if (bs < 2 || bs > kMaxCayleyBlock)
    throw std::invalid_argument("antipasto_ext block_cayley: block size " + std::to_string(bs) + " not in 2.." +
                                std::to_string(kMaxCayleyBlock));
  const int64_t n_R = n_blocks * bs * bs;
  f64 ? kern::poison<double>(R, n_R) : kern::poison<float>(R, n_R);
  if (f64)
    kern::launch_cayley_forward<double>(static_cast<const double*>(t), n_blocks, int(bs), a_lim, coeff,
                                        static_cast<double*>(R), kern::as_stream(stream));
  else
    kern::launch_cayley_forward<float>(static_cast<const float*>(t), n_blocks, int(bs), float(a_lim), float(coeff),
                                       static_cast<float*>(R), kern::as_stream(stream));
}

void block_cayley_backward(bool f64, const void* G, const void* R, const void* t, int64_t n_blocks, int64_t bs,
                           double a_lim, double coeff, void* dt, void* stream) {
  if (bs < 2 || bs > kMaxCayleyBlock)
    throw std::invalid_argument("antipasto_ext block_cayley_backward: block size " + std::to_string(bs) +
                                " not in 2.." + std::to_string(kMaxCayleyBlock));
  const int64_t n_dt = n_blocks * (bs * (bs - 1) / 2);
  f64 ? kern::poison<double>(dt, n_dt) : kern::poison<float>(dt, n_dt);
  if (f64)
    kern::launch_cayley_backward<double>(static_cast<const double*>(G), static_cast<const double*>(R),
                                         static_cast<const double*>(t), n_blocks, int(bs), a_lim, coeff,
                                         static_cast<double*>(dt), kern::as_stream(stream));
  else
    kern::launch_cayley_backward<float>(static_cast<const float*>(G), static_cast<const float*>(R),
                                        static_cast<const float*>(t), n_blocks, int(bs), float(a_lim), float(coeff),
                                        static_cast<float*>(dt), kern::as_stream(stream));
}

void gain_forward(DType dtype, const void* p, int64_t n, int64_t r, const void* S, const void* g, double coeff,
                  bool suppress_only, void* h, void* stream) {
  kern::check_width("gain_core", r, 0);
  kern::dispatch_dtype(dtype, [&](auto tag) {
    kern::launch_diag_forward<decltype(tag)>(p, n, r, S, g, coeff, suppress_only, kern::kScaleGain, h,
                                             kern::as_stream(stream));
  });
}

void gain_backward(DType dtype, const void* grad_h, const void* p, int64_t n, int64_t r, const void* S,
                   const void* g, double coeff, bool suppress_only, void* dp, void* dparams, void* workspace,
                   void* stream) {
  kern::check_width("gain_core_backward", r, 0);
  kern::dispatch_dtype(dtype, [&](auto tag) {
    kern::launch_diag_backward<decltype(tag)>(grad_h, p, n, r, S, g, coeff, suppress_only, kern::kScaleGain,
                                              kern::kFinalGain, dp, dparams, workspace, kern::as_stream(stream));
  });
}

void dplr_forward(DType dtype, const void* p, int64_t n, int64_t r, int64_t k, const void* S, const void* g,
                  const void* A, const void* B, double coeff, bool suppress_only, void* h, void* stream) {
  kern::check_width("dplr_core", r, k);
  kern::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename kern::acc_of<T>::type;
    if (n <= 0) return;
    const kern::TilePlan pl = kern::plan_tile("dplr_core", r, r, 2 * k * r, r + k, sizeof(acc_t), n);
    kern::poison<T>(h, n * r);
    AX_LAUNCH((kern::dplr_forward_kernel<T>), dim3(kern::blocks_for(n, pl.rows)), dim3(kern::kCoreThreads), pl.smem,
              kern::as_stream(stream), static_cast<const T*>(p), n, int(r), int(k), pl.rows, pl.stage,
              static_cast<const acc_t*>(S), static_cast<const acc_t*>(g), static_cast<const acc_t*>(A),
              static_cast<const acc_t*>(B), acc_t(coeff), suppress_only, static_cast<T*>(h));
    AX_CHECK_LAUNCH();
  });
}

void dplr_backward(DType dtype, const void* grad_h, const void* p, int64_t n, int64_t r, int64_t k, const void* S,
                   const void* g, const void* A, const void* B, double coeff, bool suppress_only, void* dp,
                   void* dparams, void* workspace, void* stream) {
  kern::check_width("dplr_core_backward", r, k);
  kern::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename kern::acc_of<T>::type;
    const ax::stream_t st = kern::as_stream(stream);
    const int64_t n_ctas = core_partial_ctas(n), chunk = core_rows_per_cta(n), n_part = dplr_partials(r, k);
    acc_t* ws = static_cast<acc_t*>(workspace);
    const kern::TilePlan pl = n_ctas > 0 ? kern::plan_tile("dplr_core_backward", r, r, 2 * k * r, 2 * r + 2 * k, sizeof(acc_t), chunk) : kern::TilePlan{0, false, 0};
    kern::poison_backward<T, acc_t>(dp, n * r, ws, n_ctas * n_part, dparams, n_part);
    if (n_ctas > 0) {
      AX_LAUNCH((kern::dplr_backward_kernel<T>), dim3(unsigned(n_ctas)), dim3(kern::kCoreThreads), pl.smem, st,
                static_cast<const T*>(grad_h), static_cast<const T*>(p), n, int(r), int(k), chunk, pl.rows, pl.stage,
                static_cast<const acc_t*>(S), static_cast<const acc_t*>(g), static_cast<const acc_t*>(A),
                static_cast<const acc_t*>(B), acc_t(coeff), suppress_only, static_cast<T*>(dp), ws);
      AX_CHECK_LAUNCH();
    }
    kern::launch_reduce<acc_t>(ws, n_ctas, n_part, kern::kFinalGain, r, static_cast<const acc_t*>(S),
                               static_cast<const acc_t*>(g), acc_t(coeff), suppress_only,
                               static_cast<acc_t*>(dparams), st);
  });
}

void rot_forward(DType dtype, const void* p, int64_t n, int64_t r, int64_t bs, int64_t side, const void* S,
                 const void* delta_s, const void* R, double coeff, void* h, void* stream) {
  kern::check_width("rot_core", r, 0);
  if (side != kRotNone && (side != kRotV && side != kRotU))
    throw std::invalid_argument("antipasto_ext rot_core: side must be 0, 1 or 2, got " + std::to_string(side));
  if (side != kRotNone && (bs < 1 || r % bs != 0))
    throw std::invalid_argument("antipasto_ext rot_core: block size " + std::to_string(bs) + " does not divide r = " +
                                std::to_string(r));
  kern::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename kern::acc_of<T>::type;
    const ax::stream_t st = kern::as_stream(stream);
    if (side == kRotNone) {
      kern::launch_diag_forward<T>(p, n, r, S, delta_s, coeff, false, kern::kScaleAdditive, h, st);
      return;
    }
    if (n <= 0) return;
    const kern::TilePlan pl = kern::plan_tile("rot_core", r, r, r * bs, r, sizeof(acc_t), n);
    kern::poison<T>(h, n * r);
    AX_LAUNCH((kern::rot_forward_kernel<T>), dim3(kern::blocks_for(n, pl.rows)), dim3(kern::kCoreThreads), pl.smem, st,
              static_cast<const T*>(p), n, int(r), int(bs), int(side), pl.rows, pl.stage, static_cast<const acc_t*>(S),
              static_cast<const acc_t*>(delta_s), static_cast<const acc_t*>(R), acc_t(coeff), static_cast<T*>(h));
    AX_CHECK_LAUNCH();
  });
}

void rot_backward(DType dtype, const void* grad_h, const void* p, int64_t n, int64_t r, int64_t bs, int64_t side,
                  const void* S, const void* delta_s, const void* R, double coeff, void* dp, void* dparams,
                  void* workspace, void* stream) {
  kern::check_width("rot_core_backward", r, 0);
  if (side != kRotNone && (side != kRotV && side != kRotU))
    throw std::invalid_argument("antipasto_ext rot_core_backward: side must be 0, 1 or 2, got " +
                                std::to_string(side));
  if (side != kRotNone && (bs < 1 || r % bs != 0))
    throw std::invalid_argument("antipasto_ext rot_core_backward: block size " + std::to_string(bs) +
                                " does not divide r = " + std::to_string(r));
  kern::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename kern::acc_of<T>::type;
    const ax::stream_t st = kern::as_stream(stream);
    if (side == kRotNone) {
      kern::launch_diag_backward<T>(grad_h, p, n, r, S, delta_s, coeff, false, kern::kScaleAdditive,
                                    kern::kFinalCoeff, dp, dparams, workspace, st);
      return;
    }
    const int64_t n_ctas = core_partial_ctas(n), chunk = core_rows_per_cta(n), n_part = rot_partials(r, bs, side);
    acc_t* ws = static_cast<acc_t*>(workspace);
    const kern::TilePlan pl = n_ctas > 0 ? kern::plan_tile("rot_core_backward", r, r, r * bs, 3 * r, sizeof(acc_t), chunk) : kern::TilePlan{0, false, 0};
    kern::poison_backward<T, acc_t>(dp, n * r, ws, n_ctas * n_part, dparams, n_part);
    if (n_ctas > 0) {
      AX_LAUNCH((kern::rot_backward_kernel<T>), dim3(unsigned(n_ctas)), dim3(kern::kCoreThreads), pl.smem, st,
                static_cast<const T*>(grad_h), static_cast<const T*>(p), n, int(r), int(bs), int(side), chunk, pl.rows,
                pl.stage, static_cast<const acc_t*>(S), static_cast<const acc_t*>(delta_s),
                static_cast<const acc_t*>(R), acc_t(coeff), static_cast<T*>(dp), ws);
      AX_CHECK_LAUNCH();
    }
    kern::launch_reduce<acc_t>(ws, n_ctas, n_part, kern::kFinalCoeff, r, static_cast<const acc_t*>(S),
                               static_cast<const acc_t*>(delta_s), acc_t(coeff), false, static_cast<acc_t*>(dparams),
                               st);
  });
}

void ablate_forward(DType dtype, const void* p, int64_t n, int64_t r, int64_t k, const void* S, const void* C,
                    const void* a, double coeff, void* h, void* stream) {
  kern::check_width("ablate_core", r, k);
  kern::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename kern::acc_of<T>::type;
    if (n <= 0) return;
    const kern::TilePlan pl = kern::plan_tile("ablate_core", r, r + k, r * k, r + k, sizeof(acc_t), n);
    kern::poison<T>(h, n * r);
    AX_LAUNCH((kern::ablate_forward_kernel<T>), dim3(kern::blocks_for(n, pl.rows)), dim3(kern::kCoreThreads), pl.smem,
              kern::as_stream(stream), static_cast<const T*>(p), n, int(r), int(k), pl.rows, pl.stage,
              static_cast<const acc_t*>(S), static_cast<const acc_t*>(C), static_cast<const acc_t*>(a), acc_t(coeff),
              static_cast<T*>(h));
    AX_CHECK_LAUNCH();
  });
}

void ablate_backward(DType dtype, const void* grad_h, const void* p, int64_t n, int64_t r, int64_t k, const void* S,
                     const void* C, const void* a, double coeff, void* dp, void* dparams, void* workspace,
                     void* stream) {
  kern::check_width("ablate_core_backward", r, k);
  kern::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename kern::acc_of<T>::type;
    const ax::stream_t st = kern::as_stream(stream);
    const int64_t n_ctas = core_partial_ctas(n), chunk = core_rows_per_cta(n), n_part = ablate_partials(r, k);
    acc_t* ws = static_cast<acc_t*>(workspace);
    const kern::TilePlan pl = n_ctas > 0 ? kern::plan_tile("ablate_core_backward", r, r + k, r * k, 2 * r + 2 * k, sizeof(acc_t), chunk) : kern::TilePlan{0, false, 0};
    kern::poison_backward<T, acc_t>(dp, n * r, ws, n_ctas * n_part, dparams, n_part);
    if (n_ctas > 0) {
      AX_LAUNCH((kern::ablate_backward_kernel<T>), dim3(unsigned(n_ctas)), dim3(kern::kCoreThreads), pl.smem, st,
                static_cast<const T*>(grad_h), static_cast<const T*>(p), n, int(r), int(k), chunk, pl.rows, pl.stage,
                static_cast<const acc_t*>(S), static_cast<const acc_t*>(C), static_cast<const acc_t*>(a),
                acc_t(coeff), static_cast<T*>(dp), ws);
      AX_CHECK_LAUNCH();
    }
    kern::launch_reduce<acc_t>(ws, n_ctas, n_part, kern::kFinalNone, r, static_cast<const acc_t*>(S),
                               static_cast<const acc_t*>(S), acc_t(coeff), false, static_cast<acc_t*>(dparams), st);
  });
}

void project_core_forward(DType dtype, const void* x, const void* Vh, int64_t n, int64_t d_in, int64_t r,
                          const ProjectCore& core, void* h, void* p_out, void* workspace, void* stream) {
  auto bad = [](const std::string& why) {
    throw std::invalid_argument("antipasto_ext project_core_forward: " + why);
  };
  const bool rotates = core.kind == kProjectRot && core.side != kRotNone;
  const bool lowrank = core.kind == kProjectDplr || core.kind == kProjectAblate;
  if (dtype != DType::bf16 && dtype != DType::f16) bad("x must be bfloat16 or float16");
  if (r < 1 || r > kProjectMaxR) bad("r must be in 1.." + std::to_string(kProjectMaxR) + ", got " + std::to_string(r));
  if (d_in < 8 || d_in % 8 != 0 || d_in > (int64_t(1) << 30)) bad("d_in must be a positive multiple of 8");
  if ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(Vh)) % 16 != 0) bad("x and Vh must be 16-byte aligned");
  if (core.kind < kProjectGain || core.kind > kProjectAblate) bad("core kind must be 0 (gain), 1 (rot), 2 (dplr) or 3 (ablate)");
  if (core.kind == kProjectRot && core.side != kRotNone && core.side != kRotV && core.side != kRotU) bad("side must be 0, 1 or 2");
  if (rotates && (core.bs < 1 || r % core.bs != 0 || core.R == nullptr)) bad("rot needs R and a block size that divides r");
  if (lowrank && (core.k < 1 || core.k > kProjectMaxLowRank || core.A == nullptr || core.B == nullptr))
    bad("the low-rank cores need A, B and k in 1.." + std::to_string(kProjectMaxLowRank));
  if (core.kind == kProjectAblate && core.a == nullptr) bad("ablate needs a");
  if (core.kind != kProjectAblate && core.g == nullptr) bad("the gain / rot / dplr cores need g");
  if (project_workspace_elems(n, d_in, r) > 0 && workspace == nullptr) bad("the split-K decode path needs a workspace");
  if (n <= 0) return;
  const size_t elem = dtype == DType::bf16 ? sizeof(__nv_bfloat16) : sizeof(__half);
  kern::poison<unsigned char>(h, n * r * int64_t(elem));
  kern::poison<unsigned char>(p_out, n * r * int64_t(elem));
  kern::poison<float>(workspace, project_workspace_elems(n, d_in, r));
  const kern::ProjCoreArgs c{int(core.kind), int(core.side), int(rotates ? core.bs : 1), int(lowrank ? core.k : 0),
                             static_cast<const float*>(core.S), static_cast<const float*>(core.g),
                             static_cast<const float*>(core.R), static_cast<const float*>(core.A),
                             static_cast<const float*>(core.B), static_cast<const float*>(core.a),
                             float(core.coeff), core.suppress_only};
  kern::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value) {
      const T *xp = static_cast<const T*>(x), *vp = static_cast<const T*>(Vh);
      T *hp = static_cast<T*>(h), *pp = static_cast<T*>(p_out);
      float* ws = static_cast<float*>(workspace);
      const ax::stream_t st = kern::as_stream(stream);
      if (r <= 64)
        kern::launch_project_nt<T, 4>(xp, vp, n, d_in, r, c, hp, pp, ws, st);
      else if (r <= 128)
        kern::launch_project_nt<T, 8>(xp, vp, n, d_in, r, c, hp, pp, ws, st);
      else
        kern::launch_project_nt<T, 16>(xp, vp, n, d_in, r, c, hp, pp, ws, st);
    }
  });
}

}  // namespace AX_KERNEL_NS
}  // namespace ax
