// The neon path: built with its own flags (CMakeLists.txt) where the target can hold it.
#if defined(LRK_BUILD_NEON)
#define LRK_ISA_NEON
#include "lstm_kernels_impl.h"

namespace lrk {
const Kernels* kernels_neon() { return &isa_neon::kTable; }
}  // namespace lrk
#else
#include "kernel_table.h"

namespace lrk {
const Kernels* kernels_neon() { return nullptr; }
}  // namespace lrk
#endif
