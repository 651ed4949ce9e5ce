#include "lstm_kernels.h"

#include <cmath>
#include <cstdlib>
#include <stdexcept>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu_features.h"

namespace lrk {
namespace {

// The tables this build holds, best first, each with whether this CPU can run it.
struct Candidate {
  const Kernels* table;
  bool runs;
};

std::vector<Candidate> candidates() {
  const CpuFeatures& f = cpu_features();
  return {{kernels_avx512(), f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni && f.fma},
          {kernels_avx2(), f.avx2 && f.fma},
          {kernels_neon_dotprod(), f.neon && f.dotprod},
          {kernels_neon(), f.neon},
          {kernels_scalar(), true}};
}

}  // namespace

void* alloc_buffer(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = bytes >= kHuge / 2 ? kHuge : 64;
  const size_t rounded = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded ? rounded : align);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p && align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return p;
}

void free_buffer(void* p) { std::free(p); }

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const Candidate& c : candidates())
    if (c.table && c.runs) out.push_back(c.table->isa);
  return out;
}

const Kernels& kernels(const std::string& isa) {
  std::string known;
  for (const Candidate& c : candidates()) {
    if (!c.table || !c.runs) continue;
    if (isa.empty() || isa == "auto" || isa == c.table->isa) return *c.table;
    known += (known.empty() ? "" : ", ") + std::string(c.table->isa);
  }
  throw std::invalid_argument("kernel path '" + isa + "' is not available here (available: " + known + ")");
}

Packed pack(const Kernels& kern, const float* w, int m, int k, int ldw, const std::vector<int>& row_of) {
  const int rows = row_of.empty() ? m : int(row_of.size());
  const int P = kern.panel;
  Packed out;
  out.m = rows;
  out.k = k;
  out.mp = round_up(rows, P);
  out.data.assign(size_t(out.mp) * k, 0.0f);
  for (int i = 0; i < rows; ++i) {
    const int src = row_of.empty() ? i : row_of[i];
    if (src < 0) continue;
    if (src >= m) throw std::out_of_range("pack: row index past the matrix");
    float* panel = out.data.data() + size_t(i / P) * k * P + i % P;
    for (int j = 0; j < k; ++j) panel[size_t(j) * P] = w[size_t(src) * ldw + j];
  }
  return out;
}

Packed8 pack8(const Kernels& kern, const float* w, int m, int k, int ldw, const std::vector<int>& row_of) {
  const int rows = row_of.empty() ? m : int(row_of.size());
  const int P = kern.panel;
  Packed8 out;
  out.m = rows;
  out.k = k;
  out.kp = round_up(k, 4);
  out.mp = round_up(rows, P);
  out.data.assign(size_t(out.mp) * out.kp, 0);
  out.scale.assign(size_t(out.mp), 0.0f);
  out.rowsum.assign(size_t(out.mp), 0);
  for (int i = 0; i < rows; ++i) {
    const int src = row_of.empty() ? i : row_of[i];
    if (src < 0) continue;
    if (src >= m) throw std::out_of_range("pack8: row index past the matrix");
    const float* wr = w + size_t(src) * ldw;
    float peak = 0.0f;
    for (int j = 0; j < k; ++j) peak = std::fmax(peak, std::fabs(wr[j]));
    const float inv = peak > 0.0f ? 127.0f / peak : 0.0f;
    out.scale[i] = peak / 127.0f;
    int8_t* panel = out.data.data() + size_t(i / P) * out.kp * P + size_t(i % P) * 4;
    for (int j = 0; j < k; ++j) {
      const float v = std::fmin(127.0f, std::fmax(-127.0f, wr[j] * inv));  // fmax drops a NaN
      const int8_t q = int8_t(std::lround(v));
      panel[size_t(j / 4) * 4 * P + j % 4] = q;
      out.rowsum[i] += q;
    }
  }
  return out;
}

}  // namespace lrk
