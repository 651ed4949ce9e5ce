// The thin SIMD interface the kernels are written against (after ggml's simd-mappings.h).
// One struct per ISA with the same static members; each ISA's struct is compiled only in the
// translation unit built with that ISA's flags (kernels_<isa>.cc), selected by a macro there, and
// lives in a namespace of its own (LRK_ISA_NS) so that no inline function of one ISA can be
// merged by the linker with its namesake of another.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(LRK_ISA_AVX512) || defined(LRK_ISA_AVX2)
#include <immintrin.h>
#endif
#if defined(LRK_ISA_NEON)
#include <arm_neon.h>
#endif

#if defined(LRK_ISA_AVX512)
#define LRK_ISA_NS isa_avx512
#elif defined(LRK_ISA_AVX2)
#define LRK_ISA_NS isa_avx2
#elif defined(LRK_ISA_NEON)
#define LRK_ISA_NS isa_neon
#else
#define LRK_ISA_NS isa_scalar
#endif

namespace lrk {
namespace LRK_ISA_NS {

#if defined(LRK_ISA_AVX512)
struct Simd {
  static constexpr const char* name = "avx512";
  static constexpr int W = 16;
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
  // 1 / a from the 14-bit estimate and one Newton step (relative error ~1e-8); a division costs
  // about 16 cycles per vector, this about 4.
  static V recip(V a) {
    const V r = _mm512_rcp14_ps(a);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(2.0f)));
  }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V floor(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static V scale2(V a, V n) { return _mm512_scalef_ps(a, n); }  // a 2^n for integral n in [-126, 127]
  static float sum(V a) { return _mm512_reduce_add_ps(a); }
};
#elif defined(LRK_ISA_AVX2)
struct Simd {
  static constexpr const char* name = "avx2";
  static constexpr int W = 8;
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V recip(V a) {  // 12-bit estimate, one Newton step: relative error ~1e-7
    const V r = _mm256_rcp_ps(a);
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(a, r, _mm256_set1_ps(2.0f)));
  }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V floor(V a) { return _mm256_floor_ps(a); }
  static V scale2(V a, V n) {  // 2^n from the exponent bits
    return _mm256_mul_ps(a, _mm256_castsi256_ps(_mm256_slli_epi32(
                                _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)));
  }
  static float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
  }
};
#elif defined(LRK_ISA_NEON)
struct Simd {
  static constexpr const char* name = "neon";
  static constexpr int W = 4;
  using V = float32x4_t;
  static V zero() { return vdupq_n_f32(0.f); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V fnma(V a, V b, V c) { return vfmsq_f32(c, a, b); }
  static V recip(V a) {  // 8-bit estimate, two Newton steps
    V r = vrecpeq_f32(a);
    r = vmulq_f32(r, vrecpsq_f32(a, r));
    return vmulq_f32(r, vrecpsq_f32(a, r));
  }
  static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static V min(V a, V b) { return vminq_f32(a, b); }
  static V max(V a, V b) { return vmaxq_f32(a, b); }
  static V floor(V a) { return vrndmq_f32(a); }
  static V scale2(V a, V n) {
    return vmulq_f32(a, vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23)));
  }
  static float sum(V a) { return vaddvq_f32(a); }
};
#else
// The portable path: the same interface on one float, so every kernel also builds without SIMD.
struct Simd {
  static constexpr const char* name = "scalar";
  static constexpr int W = 1;
  using V = float;
  static V zero() { return 0.f; }
  static V set1(float x) { return x; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V fnma(V a, V b, V c) { return c - a * b; }
  static V recip(V a) { return 1.0f / a; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V min(V a, V b) { return a < b ? a : b; }
  static V max(V a, V b) { return a > b ? a : b; }
  static V floor(V a) { return __builtin_floorf(a); }
  static V scale2(V a, V n) {
    int32_t i = (int32_t(n) + 127) << 23;
    float f;
    std::memcpy(&f, &i, 4);
    return a * f;
  }
  static float sum(V a) { return a; }
};
#endif

}  // namespace LRK_ISA_NS
}  // namespace lrk
