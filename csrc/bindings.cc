// pybind11 bindings of the kernel library, kept apart from the kernels themselves.
#include <pybind11/pybind11.h>

#include "build_info.h"
#include "cpu_features.h"

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
  m.doc() = "Native low-rank LSTM kernels of the ASR compression pipeline";
  m.def("build_info", [] {
    const lrk::BuildInfo& b = lrk::build_info();
    py::dict d;
    d["version"] = b.version;
    d["compiler"] = b.compiler;
    d["build_type"] = b.build_type;
    d["arch"] = b.arch;
    return d;
  }, "What this extension was built with.");
  m.def("cpu_features", [] {
    const lrk::CpuFeatures& f = lrk::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512_vnni"] = f.avx512_vnni;
    d["avx512_bf16"] = f.avx512_bf16;
    d["neon"] = f.neon;
    d["dotprod"] = f.dotprod;
    return d;
  }, "SIMD features detected on this CPU at run time.");
  m.def("best_isa", &lrk::best_isa, "The SIMD path kernels will take on this CPU.");
  m.def("report_json", &lrk::report_json, "Build info and CPU features as one JSON string.");
}
