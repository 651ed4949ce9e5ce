// The portable path, built without SIMD flags: every build has it.
#include "lstm_kernels_impl.h"

namespace lrk {
const Kernels* kernels_scalar() { return &isa_scalar::kTable; }
}  // namespace lrk
