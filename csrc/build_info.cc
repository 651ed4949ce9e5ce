#include "build_info.h"

#include <sstream>

#include "cpu_features.h"

#ifndef LRK_COMPILER
#define LRK_COMPILER "unknown"
#endif
#ifndef LRK_BUILD_TYPE
#define LRK_BUILD_TYPE "unknown"
#endif
#ifndef LRK_ARCH
#define LRK_ARCH "unknown"
#endif

namespace lrk {

const BuildInfo& build_info() {
  static const BuildInfo b{"0.1.0", LRK_COMPILER, LRK_BUILD_TYPE, LRK_ARCH};
  return b;
}

std::string report_json() {
  const BuildInfo& b = build_info();
  const CpuFeatures& f = cpu_features();
  auto flag = [](bool v) { return v ? "true" : "false"; };
  std::ostringstream o;
  o << "{\"version\": \"" << b.version << "\", \"compiler\": \"" << b.compiler
    << "\", \"build_type\": \"" << b.build_type << "\", \"arch\": \"" << b.arch
    << "\", \"best_isa\": \"" << best_isa() << "\", \"features\": {"
    << "\"avx2\": " << flag(f.avx2) << ", \"fma\": " << flag(f.fma)
    << ", \"avx512f\": " << flag(f.avx512f) << ", \"avx512bw\": " << flag(f.avx512bw)
    << ", \"avx512vl\": " << flag(f.avx512vl) << ", \"avx512_vnni\": " << flag(f.avx512_vnni)
    << ", \"avx512_bf16\": " << flag(f.avx512_bf16) << ", \"neon\": " << flag(f.neon)
    << ", \"dotprod\": " << flag(f.dotprod) << "}}";
  return o.str();
}

}  // namespace lrk
