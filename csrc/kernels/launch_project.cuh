// Host launcher of the fused projection + core (csrc/kernels/project.cuh): project_forward of the kernel API
// (csrc/kernels/api.h) in namespace ax::AX_KERNEL_NS. Include once per kernel set. Torch-free.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "csrc/kernels/api.h"
#include "csrc/kernels/launch_common.cuh"
#include "csrc/kernels/project.cuh"

namespace ax {
namespace AX_KERNEL_NS {

void project_forward(const ProjectCall& call, void* stream) {
  auto bad = [](const std::string& why) { throw std::invalid_argument("antipasto_ext project_forward: " + why); };
  const CoreParams& core = call.core;
  const int64_t n = call.n, d_in = call.d_in, r = core.r;
  const bool rotates = core.core == Core::rot && core.side != kRotNone;
  const bool lowrank = core.core == Core::dplr || core.core == Core::ablate;
  if (call.dtype != DType::bf16 && call.dtype != DType::f16) bad("x must be bfloat16 or float16");
  if (r < 1 || r > kProjectMaxR) bad("r must be in 1.." + std::to_string(kProjectMaxR) + ", got " + std::to_string(r));
  if (d_in < 8 || d_in % 8 != 0 || d_in > (int64_t(1) << 30)) bad("d_in must be a positive multiple of 8");
  if ((reinterpret_cast<uintptr_t>(call.x) | reinterpret_cast<uintptr_t>(call.Vh)) % 16 != 0)
    bad("x and Vh must be 16-byte aligned");
  if (core.core == Core::rot && core.side != kRotNone && core.side != kRotV && core.side != kRotU)
    bad("side must be 0, 1 or 2");
  if (rotates && (core.bs < 1 || r % core.bs != 0 || core.R == nullptr)) bad("rot needs R and a block size that divides r");
  if (lowrank && (core.k < 1 || core.k > kProjectMaxLowRank || core.A == nullptr ||
                  (core.core == Core::dplr && core.B == nullptr)))
    bad("the low-rank cores need their factors and k in 1.." + std::to_string(kProjectMaxLowRank));
  if (core.core == Core::ablate && core.a == nullptr) bad("ablate needs a");
  if (core.core != Core::ablate && core.g == nullptr) bad("the gain / rot / dplr cores need g");
  if (call.decode_path == DecodePath::gemv && !project_gemv_fits(n, core))
    bad("the one-kernel decode takes gain or rot without a rotation, at most " + std::to_string(kGemvRows) + " rows");
  const bool gemv = project_gemv(n, d_in, core, call.decode_path);
  const int64_t ws_elems = project_workspace_elems(n, d_in, core, call.decode_path);
  if (ws_elems > 0 && call.workspace == nullptr)
    bad("the decode path (at most " + std::to_string(kDecodeRows) + " rows) needs a workspace");
  if (!steering_fits(n, core) || !bank_fits(core) || n >= (int64_t(1) << 31))
    bad("the rows (fewer than 2^31) must split into the steering groups (and a bank needs one coefficient per "
        "group)");
  if (n <= 0) return;
  const size_t elem = call.dtype == DType::bf16 ? sizeof(__nv_bfloat16) : sizeof(__half);
  kern::poison<unsigned char>(call.h, n * r * int64_t(elem));
  kern::poison<unsigned char>(call.p_out, n * r * int64_t(elem));
  kern::poison<float>(call.workspace, ws_elems);
  // ablate's C is both L and M of the low-rank epilogue
  const kern::ProjCoreArgs c{int(core.core), core.side, int(rotates ? core.bs : 1), int(lowrank ? core.k : 0),
                             static_cast<const float*>(core.S), static_cast<const float*>(core.g),
                             static_cast<const float*>(core.R), static_cast<const float*>(core.A),
                             static_cast<const float*>(core.core == Core::ablate ? core.A : core.B),
                             static_cast<const float*>(core.a), float(core.coeff), core.suppress_only,
                             static_cast<const float*>(core.coeffs), core.entries > 0 ? n / core.entries : n,
                             core.adapters, core.n_adapters};
  kern::dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value) {
      const T *xp = static_cast<const T*>(call.x), *vp = static_cast<const T*>(call.Vh);
      T *hp = static_cast<T*>(call.h), *pp = static_cast<T*>(call.p_out);
      kern::launch_project<T>(xp, vp, n, d_in, r, c, gemv, hp, pp, static_cast<float*>(call.workspace),
                              kern::as_stream(stream));
    }
  });
}

}  // namespace AX_KERNEL_NS
}  // namespace ax
