// Choosing a kernel table at run time, and packing weights for it.
#pragma once
#include <new>
#include <string>
#include <vector>

#include "kernel_table.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace lrk {

// "auto" (or "") picks the best path this CPU runs; an unknown or unsupported name throws.
const Kernels& kernels(const std::string& isa = "auto");
// The paths this build holds and this CPU can execute, best first.
std::vector<std::string> available_isas();

// Buffers from alloc_buffer: no vector load of a packed panel or gate row splits a cache line.
template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = alloc_buffer(n * sizeof(T));
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { free_buffer(p); }
  bool operator==(const AlignedAllocator&) const { return true; }
  bool operator!=(const AlignedAllocator&) const { return false; }
};
using FloatBuffer = std::vector<float, AlignedAllocator<float>>;
using ByteBuffer = std::vector<int8_t, AlignedAllocator<int8_t>>;
using IntBuffer = std::vector<int32_t, AlignedAllocator<int32_t>>;

// A weight matrix (m x k) packed for `matmul`: panels of `panel` rows; within a panel the values of
// one column are contiguous. Rows from m to mp (m rounded up to the panel) are zero.
struct Packed {
  int m = 0, k = 0, mp = 0;
  FloatBuffer data;
};

// Packs w (m x k, row stride ldw); row i of the result is row row_of(i) of w, or zero where
// row_of(i) < 0 (how gate blocks are padded to a multiple of the vector width).
Packed pack(const Kernels& kern, const float* w, int m, int k, int ldw, const std::vector<int>& row_of = {});

// A weight matrix (m x k) quantised for `matmul_i8`: each row symmetric int8 with its own scale
// (max |w| / 127), columns padded to kp (a multiple of 4), panels of `panel` rows, and within a panel
// each group of 4 columns as one 4-byte lane per row. Rows from m to mp are zero.
struct Packed8 {
  int m = 0, k = 0, kp = 0, mp = 0;
  ByteBuffer data;
  FloatBuffer scale;  // mp
  IntBuffer rowsum;   // mp: each row's sum of its int8 weights
};

// As pack(), quantising each row of w.
Packed8 pack8(const Kernels& kern, const float* w, int m, int k, int ldw, const std::vector<int>& row_of = {});

inline int round_up(int n, int to) { return (n + to - 1) / to * to; }

// Denormal floats (from saturated gates and decayed cell states) cost x86 cores ~100 cycles per
// operation; their values (< 1.2e-38) do not matter to an LSTM, so computing flushes them to zero
// and the caller's floating-point mode is restored afterwards.
class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

}  // namespace lrk
