// The avx512 path: built with its own flags (CMakeLists.txt) where the target can hold it.
#if defined(LRK_BUILD_AVX512)
#define LRK_ISA_AVX512
#include "lstm_kernels_impl.h"

namespace lrk {
const Kernels* kernels_avx512() { return &isa_avx512::kTable; }
}  // namespace lrk
#else
#include "kernel_table.h"

namespace lrk {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace lrk
#endif
