// Op schemas of the antipasto_ext namespace and the Python module `antipasto_ext._C`.
// Device kernels register themselves (csrc/cpu, csrc/cuda); autograd and fake kernels are
// registered from Python (antipasto_ext/ops.py).
#include <Python.h>
#include <torch/library.h>

#ifndef AX_WITH_CUDA
#define AX_WITH_CUDA 0
#endif
#ifndef AX_WITH_EMULATION
#define AX_WITH_EMULATION 0
#endif
#ifndef AX_CUDA_ARCHS
#define AX_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(antipasto_ext, m) {
  m.def("block_cayley(Tensor rot_T, int block_size, float max_angle, float coeff) -> Tensor");
  m.def("block_cayley_backward(Tensor grad_R, Tensor R, Tensor rot_T, int block_size, float max_angle, "
        "float coeff) -> Tensor");
  m.def("gain_core(Tensor p, Tensor S, Tensor g, float coeff, bool suppress_only) -> Tensor");
  m.def("gain_core_backward(Tensor grad_h, Tensor p, Tensor S, Tensor g, float coeff, bool suppress_only) "
        "-> (Tensor, Tensor)");
  m.def("dplr_core(Tensor p, Tensor S, Tensor g, Tensor A, Tensor B, float coeff, bool suppress_only) -> Tensor");
  m.def("dplr_core_backward(Tensor grad_h, Tensor p, Tensor S, Tensor g, Tensor A, Tensor B, float coeff, "
        "bool suppress_only) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("rot_core(Tensor p, Tensor S, Tensor delta_s, Tensor R, float coeff, int side) -> Tensor");
  m.def("rot_core_backward(Tensor grad_h, Tensor p, Tensor S, Tensor delta_s, Tensor R, float coeff, int side) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("ablate_core(Tensor p, Tensor S, Tensor C, Tensor a, float coeff) -> Tensor");
  m.def("ablate_core_backward(Tensor grad_h, Tensor p, Tensor S, Tensor C, Tensor a, float coeff) "
        "-> (Tensor, Tensor, Tensor)");
}

static PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:O,s:O,s:s,s:O}", "cpu", Py_True, "cuda", AX_WITH_CUDA ? Py_True : Py_False,
                       "cuda_archs", AX_CUDA_ARCHS, "emulation", AX_WITH_EMULATION ? Py_True : Py_False);
}

static PyMethodDef kMethods[] = {
    {"build_info", build_info, METH_NOARGS, "What this build of antipasto_ext._C compiled."},
    {nullptr, nullptr, 0, nullptr}};

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods};
  return PyModule_Create(&def);
}
