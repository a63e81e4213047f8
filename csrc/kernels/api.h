// Torch-free API of the CUDA kernel family: plain functions on raw pointers, sizes, a workspace
// and a stream. The same launcher source (csrc/kernels/launchers.cuh) is compiled twice:
//   ax::cuda_impl  by nvcc (csrc/cuda/kernels.cu): device pointers, `stream` a cudaStream_t;
//   ax::emu_impl   by the host compiler with AX_EMULATE_CUDA (csrc/emulated/kernels.cpp): host pointers,
//                  the kernels run through the CPU emulation of the CUDA execution model.
// Conventions:
//   * activations (p, h, grad_h, dp) are row-major (n, r) in `dtype`;
//   * the accumulation type is double for DType::f64, float otherwise; every small parameter
//     (S, g, delta_s, R, A, B, C, a), Cayley input/output and parameter-gradient output is an
//     array of accumulators (the caller casts);
//   * backward ops take a workspace of core_workspace_elems(n, n_partial) accumulators, which they
//     overwrite (no zeroing needed), and write the gradients of all small parameters into one
//     accumulator array `dparams` of n_partial entries, in the layouts named below;
//   * every call is asynchronous on `stream`, never synchronises with the host, and throws
//     std::invalid_argument for a size the kernels cannot take, std::runtime_error for a failed launch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ax {

enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// Rows per CTA of the backward reductions; CTA c sums rows [c*chunk, (c+1)*chunk) in order. Depends
// only on n (deterministic), and is the C++ CPU kernels' chunking, so the summation order matches.
inline int64_t core_rows_per_cta(int64_t n) {
  const int64_t c = (n + 127) / 128;
  return c > 16 ? c : 16;
}
inline int64_t core_partial_ctas(int64_t n) {
  const int64_t chunk = core_rows_per_cta(n);
  return n > 0 ? (n + chunk - 1) / chunk : 0;
}
inline int64_t core_workspace_elems(int64_t n, int64_t n_partial) { return core_partial_ctas(n) * n_partial; }

// Sizes of the `dparams` layouts.
inline int64_t gain_partials(int64_t r) { return r; }                           // dg (r)
inline int64_t dplr_partials(int64_t r, int64_t k) { return r + 2 * k * r; }    // dg (r) | dA (k,r) | dB (r,k)
inline int64_t rot_partials(int64_t r, int64_t bs, int64_t side) {              // d delta_s (r) | dR (r/bs,bs,bs)
  return r + (side != 0 ? r * bs : 0);
}
inline int64_t ablate_partials(int64_t r, int64_t k) { return r * k + k; }      // dC (r,k) | da (k)

// Fused projection + core (csrc/kernels/project.cuh). Its core, every pointer a float array on the
// kernel's device: kind 0 gain (S, g = gain, suppress_only), 1 rot (S, g = delta_s, side, bs, R; R
// unused for side 0), 2 dplr (S, g, suppress_only, A (k, r), B (r, k)), 3 ablate (S, A = B = C (r, k), a (k)).
enum ProjectKind : int64_t { kProjectGain = 0, kProjectRot = 1, kProjectDplr = 2, kProjectAblate = 3 };
constexpr int64_t kProjectMaxR = 256;       // the CTA's tile spans all r columns
constexpr int64_t kProjectMaxLowRank = 32;  // k of the dplr / ablate epilogue
struct ProjectCore {
  int64_t kind = kProjectGain;
  int64_t side = 0, bs = 1, k = 0;
  const void *S = nullptr, *g = nullptr, *R = nullptr, *A = nullptr, *B = nullptr, *a = nullptr;
  double coeff = 1.0;
  bool suppress_only = false;
};

// K elements per split of the split-K decode
// path (n <= 16 rows and d_in >= 1024; a multiple of 16), else d_in; and its workspace in floats.
inline int64_t project_k_split(int64_t n, int64_t d_in) {
  if (n > 16 || d_in < 1024) return d_in;
  int64_t splits = d_in / 512;
  if (splits > 64) splits = 64;
  return (d_in / splits + 15) / 16 * 16;
}
inline int64_t project_workspace_elems(int64_t n, int64_t d_in, int64_t r) {
  const int64_t k_split = project_k_split(n, d_in);
  const int64_t splits = k_split > 0 ? (d_in + k_split - 1) / k_split : 1;
  return splits > 1 ? splits * n * r : 0;
}

namespace cuda_impl {
#include "csrc/kernels/api_decls.inc"
}  // namespace cuda_impl

namespace emu_impl {
#include "csrc/kernels/api_decls.inc"
// Emulator only: record the names of the kernels the calling thread launches (tests of the dispatch).
void start_launch_log();
std::vector<std::string> stop_launch_log();
// The emulated stream an op of the calling thread launches on: a token the emulator takes as the current
// stream, so a kernel launched on any other stream (e.g. the default stream 0) is an error.
void* op_stream();
// Emulated device memory between guard zones (checked after every launch); any host thread may free it.
void* device_malloc(size_t bytes);
void device_free(void* p);
}  // namespace emu_impl

}  // namespace ax
