// The kernel API: what the torch glue (csrc/glue.h) hands a kernel set, on raw pointers, torch-free.
// Three kernel sets implement it, one per engine:
//   ax::cpu_impl   the C++ CPU kernels (csrc/cpu/kernels.cpp);
//   ax::cuda_impl  the CUDA kernels compiled by nvcc (csrc/cuda/kernels.cu, launchers in csrc/kernels/launch*.cuh);
//   ax::emu_impl   the same CUDA kernel source compiled by the host compiler through the CPU emulation of the
//                  CUDA execution model (csrc/emulated/kernels.cpp, emu/).
// One params struct per op family travels from the glue to the kernels: CoreParams (the r-space core of a
// layer, packed per core by csrc/cores.cpp) inside CoreCall (core forward / backward over n rows) and
// ProjectCall (the fused projection), and CayleyCall. Conventions:
//   * activations (p, h, grad_h, dp) are row-major (n, r) in `dtype`; x (n, d_in) and Vh (r, d_in) likewise;
//   * the accumulation type is double for DType::f64, float otherwise; every small parameter (S, g, R, A, B,
//     a), the Cayley inputs / outputs and the parameter-gradient output are arrays of accumulators;
//   * a backward writes the gradients of all the core's parameters into one accumulator array `dparams` of
//     core_dparams_elems(core) entries (layouts below) and uses a workspace of core_workspace_elems(n, core)
//     accumulators, which it overwrites (no zeroing needed);
//   * every call is asynchronous on `stream` (the CPU set runs synchronously), never synchronises with the
//     host, and throws std::invalid_argument for a size its kernels cannot take.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "csrc/kernels/math.h"

// What this build holds (setup.py defines them; 0 / "" elsewhere, e.g. the torch-free tests).
#ifndef AX_WITH_CUDA
#define AX_WITH_CUDA 0
#endif
#ifndef AX_WITH_EMULATION
#define AX_WITH_EMULATION 0
#endif
#ifndef AX_CUDA_ARCHS
#define AX_CUDA_ARCHS ""
#endif

namespace ax {

enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// The r-space cores (docs/SPEC.md): gain (antipasto, corda), rot, dplr, ablate. Numbered from 0 without gaps:
// with_core dispatches over 0 .. kCoreCount - 1.
enum class Core : int { gain = 0, rot = 1, dplr = 2, ablate = 3 };
constexpr int kCoreCount = 4;

// Calls fn(std::integral_constant<Core, c>{}): code per core picked at compile time (the kernel sets specialise a
// template on Core; a new core needs no new case anywhere else). `c` must be a valid core.
template <class Fn, int I = 0>
decltype(auto) with_core(Core c, Fn&& fn) {
  if constexpr (I + 1 < kCoreCount) {
    if (int(c) != I) return with_core<Fn, I + 1>(c, static_cast<Fn&&>(fn));
  }
  return fn(std::integral_constant<Core, Core(I)>{});
}
// The side antipasto_rot rotates (rot's `side`).
enum RotSide : int { kRotNone = 0, kRotV = 1, kRotU = 2 };

// One adapter layer's core. Pointers are accumulator arrays on the kernels' device.
struct CoreParams {
  Core core = Core::gain;
  int64_t r = 0;
  int64_t k = 0;               // dplr: the low rank; ablate: the ablated directions
  int64_t bs = 1;              // rot sides V / U: the block size (1 otherwise)
  int side = kRotNone;         // rot
  bool suppress_only = false;  // gain, dplr
  double coeff = 1.0;
  // Steering: the call's n rows are `entries` consecutive groups of n / entries rows (n a multiple of entries);
  // with `coeffs` (entries accumulators) group e uses coefficient coeffs[e] instead of `coeff`, and rot with a
  // rotated side takes one rotation set per group (R (entries, r / bs, bs, bs)). Unsteered: one group, no coeffs
// (several groups need coeffs).
  int64_t entries = 1;
  const void* coeffs = nullptr;
  // A bank (with coeffs): group e runs adapter adapters[e] (int64, entries of them; out-of-range indices are
  // clamped to the bank) of n_adapters, whose trainable arrays are stacked: g, delta_s (n_adapters, r), A (n_adapters,
  // k, r), B, C (n_adapters, r, k), a (n_adapters, k); S is shared. Their gradients come per adapter.
  const int64_t* adapters = nullptr;
  int64_t n_adapters = 1;
  const void* S = nullptr;  // (r)
  const void* g = nullptr;  // gain, dplr: g (r); rot: delta_s (r)
  const void* R = nullptr;  // rot sides V / U: (r / bs, bs, bs)
  const void* A = nullptr;  // dplr: A (k, r); ablate: C (r, k)
  const void* B = nullptr;  // dplr: B (r, k)
  const void* a = nullptr;  // ablate: a = clamp(alpha, 0, 1) (k)
};

// Whether n rows split into the call's steering groups (equal, at most 2^30 of them; several only with coeffs).
inline bool steering_fits(int64_t n, const CoreParams& c) {
  return c.entries >= 1 && c.entries <= (int64_t(1) << 30) && n % c.entries == 0 && (c.coeffs || c.entries == 1);
}
// Whether the bank fields are consistent: one adapter without adapters, indices only with coeffs.
inline bool bank_fits(const CoreParams& c) {
  return c.n_adapters >= 1 && (!c.adapters || c.coeffs) && (c.adapters || c.n_adapters == 1);
}

// True when rot's R holds one rotation set per steering group.
inline bool rot_per_entry(const CoreParams& c) {
  return c.core == Core::rot && c.side != kRotNone && c.coeffs != nullptr;
}

// Parameter-gradient entries of one reduction chunk: gain dg (r) | rot d delta_s (r), dR (r bs, sides V / U) |
// dplr dg (r), dA (k r), dB (r k) | ablate dC (r k), da (k).
inline int64_t core_partials(const CoreParams& c) {
  switch (c.core) {
    case Core::gain: return c.r;
    case Core::rot: return c.r + (c.side != kRotNone ? c.r * c.bs : 0);
    case Core::dplr: return c.r + 2 * c.k * c.r;
    case Core::ablate: return c.r * c.k + c.k;
  }
  return 0;
}
// The trailing partials that belong to one steering group's parameters (rot's dR when R is per group); the others
// are shared by all groups.
inline int64_t core_entry_partials(const CoreParams& c) { return rot_per_entry(c) ? c.r * c.bs : 0; }
// Entries of `dparams`: the shared partials (one block per adapter of a bank), then the per-group ones of each
// group in group order.
inline int64_t core_dparams_elems(const CoreParams& c) {
  const int64_t n_entry = core_entry_partials(c);
  return c.n_adapters * (core_partials(c) - n_entry) + c.entries * n_entry;
}
// Offset of adapter a's copy of each stacked parameter array.
inline int64_t bank_stride_g(const CoreParams& c) { return c.r; }
inline int64_t bank_stride_AB(const CoreParams& c) { return c.r * c.k; }
inline int64_t bank_stride_a(const CoreParams& c) { return c.k; }

// Rows of one steering group.
inline int64_t core_entry_rows(int64_t n, const CoreParams& c) { return c.entries > 0 ? n / c.entries : 0; }

// The reduction of every backward, the same on every engine so parameter gradients are the same bits whatever runs
// them: each steering group's rows split into chunks of core_rows_per_chunk(group rows) rows; chunk partials are
// sums in row order; a shared entry is the sum over groups, in group order, of (the group's chunk partials summed
// in chunk order) times the chain-rule factor at the group's coefficient (the sum starting from the first group's
// value; with a bank, over the groups of each adapter, 0 for an adapter no group runs); a per-group entry is its
// group's sum.
// Chunks: at least kCoreChunks per group of at least 16 * kCoreChunks rows, so a backward grid holds twice the SMs of
// an H100 / H200 (132); a constant, not the device's SM count, so every engine chunks the same way.
constexpr int64_t kCoreChunks = 264;
inline int64_t core_rows_per_chunk(int64_t rows) {
  const int64_t c = rows / kCoreChunks;
  return c > 16 ? c : 16;
}
inline int64_t core_chunks_per_entry(int64_t rows) {
  const int64_t chunk = core_rows_per_chunk(rows);
  return rows > 0 ? (rows + chunk - 1) / chunk : 0;
}
inline int64_t core_chunks(int64_t n, const CoreParams& c) {
  return c.entries * core_chunks_per_entry(core_entry_rows(n, c));
}
// Stride of a chunk's slice of partials in the workspace: the partials rounded up to 8 accumulators, so every slice
// starts on a 32-byte sector (the second stage reads one entry of each slice per thread: whole sectors per warp).
AX_HD inline int64_t core_slice(int64_t partials) { return (partials + 7) / 8 * 8; }
inline int64_t core_workspace_elems(int64_t n, const CoreParams& c) {
  return core_chunks(n, c) * core_slice(core_partials(c));
}

// A core forward (p -> h) or backward (grad_h, p -> dp, dparams) over n rows.
struct CoreCall {
  DType dtype = DType::f32;
  int64_t n = 0;
  CoreParams core;
  const void* p = nullptr;
  void* h = nullptr;              // forward
  const void* grad_h = nullptr;   // backward
  void* dp = nullptr;             // backward
  void* dparams = nullptr;        // backward: core_dparams_elems(core) accumulators
  void* workspace = nullptr;      // backward: core_workspace_elems(n, core) accumulators
};

// The fused projection + core (csrc/kernels/project.cuh): h = core(x Vh^T), P accumulated in fp32 on the
// tensor cores, bf16 / f16 only; x, Vh 16-byte aligned, d_in % 8 == 0, r <= kProjectMaxR, k <= kProjectMaxLowRank.
// Parameters are float arrays. p_out (n, r) optional (nullptr); workspace: project_workspace_elems floats.
constexpr int64_t kProjectMaxR = 256;       // the CTA's tile spans all r columns
constexpr int64_t kProjectMaxLowRank = 32;  // k of the dplr / ablate epilogue
// The cores the fused kernel's epilogue applies (another core takes the BLAS + core kernel path).
inline bool project_supports(const CoreParams& c) {
  const bool lowrank = c.core == Core::dplr || c.core == Core::ablate;
  return (c.core == Core::gain || c.core == Core::rot || lowrank) && c.r <= kProjectMaxR &&
         (!lowrank || c.k <= kProjectMaxLowRank);
}
// Which decode path a call takes (below): `model` (the default) the faster by the decode model; a test or a
// benchmark may name one.
enum class DecodePath : int { model = 0, split = 1, gemv = 2 };
struct ProjectCall {
  DType dtype = DType::bf16;
  int64_t n = 0, d_in = 0;
  CoreParams core;
  const void* x = nullptr;
  const void* Vh = nullptr;
  void* h = nullptr;
  void* p_out = nullptr;
  void* workspace = nullptr;
  DecodePath decode_path = DecodePath::model;
};

// The decode path of the fused projection (n <= kDecodeRows rows): project_decode_kernel computes the fp32 partial
// P of a kDecodeCols-column slice over a K range of project_decode_k(d_in, r) elements per CTA, its whole slice of
// x and Vh in flight at once; project_finish_kernel sums the partials of each row in split order (deterministic,
// no atomics) and applies the core. The grid holds at least kDecodeCtas CTAs where the K range allows it: the SM
// count of an H100 / H200 (a constant, so every engine splits alike), so every SM streams its share of Vh.
// The K range is a multiple of 64 (whole 128-byte rows per quarter warp in the fill) and at most kDecodeMaxK: the
// largest whose tiles (16 + 32 rows of K + 8 16-bit elements, 43 KiB) fit the 48 KiB a CTA gets without the opt-in.
// The cap binds only at large d_in (r 256: past d_in 4352), where it keeps the finish's partials few (d_in 14336:
// 32 splits, one 32 KiB round of reads for the one CTA of a row; a cap of 256 would make 56).
constexpr int64_t kDecodeRows = 16;   // one m16 tile
constexpr int64_t kDecodeCols = 32;   // four n8 tiles
constexpr int64_t kDecodeCtas = 132;
constexpr int64_t kDecodeMaxK = 448;
inline bool project_decodes(int64_t n) { return n <= kDecodeRows; }
inline int64_t project_decode_k(int64_t d_in, int64_t r) {
  const int64_t tiles = (r + kDecodeCols - 1) / kDecodeCols;
  const int64_t splits = (kDecodeCtas + tiles - 1) / tiles;
  const int64_t k = ((d_in + splits - 1) / splits + 63) / 64 * 64;
  return k < kDecodeMaxK ? k : kDecodeMaxK;
}
inline int64_t project_decode_splits(int64_t d_in, int64_t r) {
  const int64_t k = project_decode_k(d_in, r);
  return (d_in + k - 1) / k;
}
// The finish kernel: a CTA of kFinishThreads per row; the threads of a column split its partials into
// finish_groups(r) interleaved sets and have up to kFinishBatch of them in flight (one round of L2 reads for up to
// 32 splits a set: the K cap bounds the splits at d_in 14336 to 32).
constexpr int64_t kFinishThreads = 256;
constexpr int64_t kFinishBatch = 32;
inline int64_t finish_groups(int64_t r) { return r < kFinishThreads ? kFinishThreads / r : 1; }
// Rounds of partial loads a finish thread makes.
inline int64_t finish_batches(int64_t d_in, int64_t r) {
  const int64_t groups = finish_groups(r);
  return ((project_decode_splits(d_in, r) + groups - 1) / groups + kFinishBatch - 1) / kFinishBatch;
}

// The columnwise cores (gain; rot without a rotation: h_j = P_j s_j) at n <= kGemvRows rows may take one kernel
// instead, project_gemv_kernel: a CTA of kGemvThreads per kGemvCols columns of r over all of K, no partials, so no
// finish kernel and none of its rounds of L2 reads; but every CTA reads all of x, and d_in past one batch of loads
// (gemv_batch(n) chunks of 8 elements a thread: d_in 16384 for one row, half that for more, whose x chunks take
// the registers) costs a DRAM latency a batch. The dispatch takes it where the decode model below says it is faster.
constexpr int64_t kGemvRows = 4;
constexpr int64_t kGemvCols = 2;
constexpr int64_t kGemvThreads = 512;
constexpr int64_t gemv_batch(int64_t rows) { return rows == 1 ? 4 : 2; }
// Rounds of loads a one-kernel decode thread makes.
inline int64_t gemv_batches(int64_t n, int64_t d_in) {
  const int64_t per_batch = kGemvThreads * gemv_batch(n);
  return (d_in / 8 + per_batch - 1) / per_batch;
}

// The decode model (an H200; assumed constants, not measurements: benchmarks/results/kernel_metrics.md prints it
// per shape). Split K: the decode kernel has every byte in flight at once, so it takes one DRAM latency plus the
// HBM bytes at peak; the finish (one CTA, one SM, per row) one L2 latency per batch of partial loads (the core's
// parameters are read in the first), the row's partials through the SM's L2 port, and one L2 latency for the core
// (its dependent reads and the stores of h). One kernel: one DRAM latency per batch of loads, the HBM bytes at peak
// or a CTA's bytes (its Vh rows and all of x) through its SM's L2 port, whichever takes longer, and one L2 latency
// for the stores of h. Launch gaps are not counted (a CUDA graph).
struct DecodeModel {
  double hbm_bytes_per_s = 4.8e12, dram_latency_s = 0.6e-6, l2_latency_s = 0.3e-6;
  double sm_l2_bytes_per_s = 64 * 1.98e9;  // an SM's L2 reads: 64 bytes a clock at 1.98 GHz
};
inline double decode_hbm_bytes(int64_t n, int64_t d_in, int64_t r) { return double((r + n) * d_in * 2); }
inline double decode_split_seconds(int64_t n, int64_t d_in, int64_t r, const DecodeModel& m = DecodeModel()) {
  return m.dram_latency_s + decode_hbm_bytes(n, d_in, r) / m.hbm_bytes_per_s +
         m.l2_latency_s * double(finish_batches(d_in, r) + 1) +
         double(project_decode_splits(d_in, r) * r * 4) / m.sm_l2_bytes_per_s;
}
inline double decode_gemv_seconds(int64_t n, int64_t d_in, int64_t r, const DecodeModel& m = DecodeModel()) {
  const double hbm = decode_hbm_bytes(n, d_in, r) / m.hbm_bytes_per_s;
  const double cta = double((kGemvCols + n) * d_in * 2) / m.sm_l2_bytes_per_s;
  return m.dram_latency_s * double(gemv_batches(n, d_in)) + (hbm > cta ? hbm : cta) + m.l2_latency_s;
}
inline bool project_gemv_fits(int64_t n, const CoreParams& c) {
  return n <= kGemvRows && (c.core == Core::gain || (c.core == Core::rot && c.side == kRotNone));
}
inline bool project_gemv(int64_t n, int64_t d_in, const CoreParams& c, DecodePath path = DecodePath::model) {
  if (path != DecodePath::model || !project_gemv_fits(n, c)) return path == DecodePath::gemv;
  return decode_gemv_seconds(n, d_in, c.r) < decode_split_seconds(n, d_in, c.r);
}
// Floats of the decode path's workspace (the partials, (splits, n, r)); 0 for more rows and for the one-kernel path.
inline int64_t project_workspace_elems(int64_t n, int64_t d_in, const CoreParams& c,
                                       DecodePath path = DecodePath::model) {
  return project_decodes(n) && !project_gemv(n, d_in, c, path) ? project_decode_splits(d_in, c.r) * n * c.r : 0;
}

// Block Cayley rotations (docs/SPEC.md §2): forward t (n_blocks, bs(bs-1)/2) -> R (n_blocks, bs, bs);
// backward grad_R, R, t -> dt. Accumulator arrays (double when f64).
// With `coeffs`, block b uses coefficient coeffs[b / blocks_per_coeff] instead of `coeff`.
struct CayleyCall {
  bool f64 = false;
  int64_t n_blocks = 0, bs = 2;
  double a_lim = 0, coeff = 1.0;
  const void* coeffs = nullptr;
  int64_t blocks_per_coeff = 1;
  const void* t = nullptr;
  void* R = nullptr;               // forward output; backward input (the forward's R)
  const void* grad_R = nullptr;    // backward
  void* dt = nullptr;              // backward
};

namespace cpu_impl {
const char* kernel_set_name();
void core_forward(const CoreCall& c, void* stream);
void core_backward(const CoreCall& c, void* stream);
void cayley_forward(const CayleyCall& c, void* stream);
void cayley_backward(const CayleyCall& c, void* stream);
}  // namespace cpu_impl

// The CUDA kernel source, compiled by nvcc (cuda_impl) and through the emulator (emu_impl): the same API,
// defined by csrc/kernels/launchers.cuh in each namespace, plus the fused projection.
#define AX_CUDA_KERNEL_SET_API                                   \
  const char* kernel_set_name();                                 \
  void core_forward(const CoreCall& c, void* stream);            \
  void core_backward(const CoreCall& c, void* stream);           \
  void cayley_forward(const CayleyCall& c, void* stream);        \
  void cayley_backward(const CayleyCall& c, void* stream);       \
  void project_forward(const ProjectCall& c, void* stream);

namespace cuda_impl {
AX_CUDA_KERNEL_SET_API
}  // namespace cuda_impl

namespace emu_impl {
AX_CUDA_KERNEL_SET_API
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

#undef AX_CUDA_KERNEL_SET_API

}  // namespace ax
