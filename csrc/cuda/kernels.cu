// The CUDA kernel set compiled by nvcc: ax::cuda_impl (csrc/kernels/api.h). Torch-free, so tools/check_ptxas.py
// can compile it alone for the register / spill report.
#include "csrc/kernels/launchers.cuh"
