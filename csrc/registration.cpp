// Op schemas of the antipasto_ext namespace and the Python module `antipasto_ext._C`. The device
// implementations are registered by csrc/ops.cpp, autograd by csrc/autograd.cpp, the fake kernels by
// antipasto_ext/ops.py.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "csrc/kernels/api.h"

// A core is (core, S, params, coeff, option, coeffs, adapters): its name, the frozen singular values, its
// parameters in a fixed order, its one integer setting and, when steered, one coefficient per group of rows and
// (a bank) one adapter index per group (csrc/cores.h).
TORCH_LIBRARY(antipasto_ext, m) {
  m.def("core(str core, Tensor p, Tensor S, Tensor[] params, float coeff, int option, Tensor? coeffs=None, "
        "Tensor? adapters=None) -> Tensor");
  m.def("core_backward(str core, Tensor grad_h, Tensor p, Tensor S, Tensor[] params, float coeff, int option, "
        "Tensor? coeffs=None, Tensor? adapters=None) -> (Tensor, Tensor[])");
  // The whole layer y = x W^T + b + core(x Vh^T) U^T, and p = x Vh^T (an empty (0, r) tensor unless need_p).
  m.def("layer(str core, Tensor x, Tensor W, Tensor? bias, Tensor U, Tensor Vh, Tensor S, Tensor[] params, "
        "float coeff, int option, bool need_p, Tensor? coeffs=None, Tensor? adapters=None) -> (Tensor, Tensor)");
  // With coeffs (G,): one rotation set per coefficient, (G, n_blocks, bs, bs), of rot_T (n_blocks, m) or of its
  // own generator, rot_T (G, n_blocks, m).
  m.def("block_cayley(Tensor rot_T, int block_size, float max_angle, float coeff, Tensor? coeffs=None) -> Tensor");
  m.def("block_cayley_backward(Tensor grad_R, Tensor R, Tensor rot_T, int block_size, float max_angle, "
        "float coeff, Tensor? coeffs=None) -> Tensor");
}

static PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:O,s:O,s:s,s:O}", "cpu", Py_True, "cuda", AX_WITH_CUDA ? Py_True : Py_False,
                       "cuda_archs", AX_CUDA_ARCHS, "emulation", AX_WITH_EMULATION ? Py_True : Py_False);
}

// _emulator_launch_log(True) starts recording the emulated kernel launches of the calling thread;
// _emulator_launch_log(False) stops and returns their names in order.
static PyObject* emulator_launch_log(PyObject*, PyObject* start) {
#if AX_WITH_EMULATION
  if (PyObject_IsTrue(start)) {
    ax::emu_impl::start_launch_log();
    Py_RETURN_NONE;
  }
  const std::vector<std::string> names = ax::emu_impl::stop_launch_log();
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(names.size()));
  for (size_t i = 0; i < names.size(); ++i)
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), PyUnicode_FromString(names[i].c_str()));
  return out;
#else
  (void)start;
  PyErr_SetString(PyExc_RuntimeError, "antipasto_ext: this build has no CUDA emulation engine");
  return nullptr;
#endif
}

static PyMethodDef kMethods[] = {
    {"build_info", build_info, METH_NOARGS, "What this build of antipasto_ext._C compiled."},
    {"_emulator_launch_log", emulator_launch_log, METH_O, "Record / return the emulated kernel launches (tests)."},
    {nullptr, nullptr, 0, nullptr}};

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods};
  return PyModule_Create(&def);
}
