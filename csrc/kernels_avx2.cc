// The avx2 path: built with its own flags (CMakeLists.txt) where the target can hold it.
#if defined(LRK_BUILD_AVX2)
#define LRK_ISA_AVX2
#include "lstm_kernels_impl.h"

namespace lrk {
const Kernels* kernels_avx2() { return &isa_avx2::kTable; }
}  // namespace lrk
#else
#include "kernel_table.h"

namespace lrk {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace lrk
#endif
