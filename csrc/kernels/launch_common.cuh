// Helpers of the host launchers (csrc/kernels/launch_*.cuh), in namespace ax::AX_KERNEL_NS::kern. Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "csrc/kernels/api.h"
#include "csrc/kernels/kernel_ns.h"
#include "emu/portability.cuh"

namespace ax {
namespace AX_KERNEL_NS {
namespace kern {

inline ax::stream_t as_stream(void* s) { return static_cast<ax::stream_t>(s); }

// Outputs and workspaces of a call are poisoned before its launches (emulation only: ax::poison_output).
template <typename E>
void poison(void* p, int64_t n) {
  if (p && n > 0) ax::poison_output(p, size_t(n) * sizeof(E));
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

}  // namespace kern
}  // namespace AX_KERNEL_NS
}  // namespace ax
