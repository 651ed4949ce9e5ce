// Run-time CPU feature detection: which SIMD paths this processor can execute.
#pragma once
#include <string>

namespace lrk {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool neon = false;     // aarch64 Advanced SIMD
  bool dotprod = false;  // aarch64 sdot/udot
};

// Detected once and cached; safe to call from any thread.
const CpuFeatures& cpu_features();

// The widest SIMD path this build can run on this CPU: "avx512" (with VNNI), "avx2", "neon-dotprod",
// "neon" or "scalar".
std::string best_isa();

}  // namespace lrk
