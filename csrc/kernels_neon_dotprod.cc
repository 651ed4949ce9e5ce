// The neon path with the dot-product extension (armv8.2-a+dotprod: sdot for the int8 products), built
// with its own flags (CMakeLists.txt) where the target can hold it; the same float kernels as neon.
#if defined(LRK_BUILD_NEON)
#define LRK_ISA_NEON
#define LRK_ISA_DOTPROD
#include "lstm_kernels_impl.h"

namespace lrk {
const Kernels* kernels_neon_dotprod() { return &isa_neon_dotprod::kTable; }
}  // namespace lrk
#else
#include "kernel_table.h"

namespace lrk {
const Kernels* kernels_neon_dotprod() { return nullptr; }
}  // namespace lrk
#endif
