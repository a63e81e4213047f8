// The emulated kernel set: the CUDA kernel source compiled by the host compiler through the CPU emulation of
// the CUDA execution model (emu/): ax::emu_impl (csrc/kernels/api.h), the same kernel and launcher source as
// csrc/cuda/kernels.cu. Torch-free. Launches run synchronously on the calling
// thread, on the emulated stream of the op (op_stream).
#ifndef AX_EMULATE_CUDA
#define AX_EMULATE_CUDA 1
#endif
#include "csrc/kernels/launchers.cuh"

namespace ax {
namespace emu_impl {
void start_launch_log() { ax_emu::start_launch_log(); }
std::vector<std::string> stop_launch_log() { return ax_emu::stop_launch_log(); }
void* device_malloc(size_t bytes) { return ax_emu::device_malloc(bytes, "op output"); }
void device_free(void* p) { ax_emu::device_free(p); }
void* op_stream() {
  static thread_local char token;
  ax_emu::set_current_stream(&token);
  return &token;
}
}  // namespace emu_impl
}  // namespace ax
