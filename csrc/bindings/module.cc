// The extension module pagedllm._C: two submodules, declared in their own files.
//   _C.core — the scheduler and its step API (core_bindings.cc)
//   _C.ops  — attention, cache and layer kernels (ops_bindings.cc)
#include <pybind11/pybind11.h>

namespace py = pybind11;

void init_core_bindings(py::module_& m);
void init_ops_bindings(py::module_& m);

PYBIND11_MODULE(_C, m) {
  // torch first: on the GPU machine (torch 2.11+cu130), `import pagedllm._C` followed by
  // `import torch` crashed inside torch's import (a segfault in torch/_ops.py, 2026-12-04), while
  // torch followed by pagedllm._C works. Both extensions use pybind11, and the first to load sets
  // up the state they share; letting torch do that is the order that is known to work.
  py::module_::import("torch");
  m.doc() = "pagedllm compiled core";
  auto core = m.def_submodule("core", "scheduler, KV block manager, prefix cache, step API");
  init_core_bindings(core);
  auto ops = m.def_submodule("ops", "paged attention, KV cache and layer kernels");
  init_ops_bindings(ops);
#ifdef PAGEDLLM_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
