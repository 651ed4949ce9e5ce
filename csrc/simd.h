// The thin SIMD interface the kernels are written against (after ggml's simd-mappings.h).
// One struct per ISA with the same static members; each ISA's struct is compiled only in the
// translation unit built with that ISA's flags (kernels_<isa>.cc), selected by a macro there, and
// lives in a namespace of its own (LRK_ISA_NS) so that no inline function of one ISA can be
// merged by the linker with its namesake of another.
//
// The int8 part: I holds W int32 lanes, each lane one output row's accumulator; a weight vector holds
// W lanes of 4 consecutive int8 weights of that row (load4), an activation vector the same 4 int8
// activations in every lane (bcast4). dot4 adds the 4 products of each lane to it, exactly: weights
// and activations both lie in [-127, 127]. kOffset: the path takes its activations as u8 = q + 128
// (x86's u8 x s8 products), and the accumulator starts at -128 times the row's weight sum. to_int
// rounds to nearest (ties to even); store_i8 keeps the low byte of each lane.
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
#elif defined(LRK_ISA_NEON) && defined(LRK_ISA_DOTPROD)
#define LRK_ISA_NS isa_neon_dotprod
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

  // int8: vpdpbusd (AVX-512 VNNI), u8 activations times s8 weights, four per lane, in one instruction
  using I = __m512i;
  static constexpr bool kOffset = true;
  static I izero() { return _mm512_setzero_si512(); }
  static I load4(const int8_t* p) { return _mm512_load_si512(p); }
  static I bcast4(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return _mm512_set1_epi32(v); }
  static I dot4(I acc, I w, I x) { return _mm512_dpbusd_epi32(acc, x, w); }
  static I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  static I offset(const int32_t* rowsum) { return _mm512_sub_epi32(izero(), _mm512_slli_epi32(_mm512_load_si512(rowsum), 7)); }
  static V to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static I to_int(V a) { return _mm512_cvtps_epi32(a); }  // to nearest, ties to even
  static I iset1(int32_t v) { return _mm512_set1_epi32(v); }
  static void store_i8(int8_t* p, I a) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(a)); }
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

  // int8: vpmaddubsw takes u8 x s8 and saturates each pair's sum at int16. With |x| as the u8 and the
  // weight given x's sign (vpsignb) both factors stay within 127, and a pair sums to at most
  // 2 x 127 x 127 = 32258: it never saturates, and activations keep all 8 bits.
  using I = __m256i;
  static constexpr bool kOffset = false;
  static I izero() { return _mm256_setzero_si256(); }
  static I load4(const int8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static I bcast4(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return _mm256_set1_epi32(v); }
  static I dot4(I acc, I w, I x) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  static I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  static I offset(const int32_t*) { return izero(); }
  static V to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static I to_int(V a) { return _mm256_cvtps_epi32(a); }
  static I iset1(int32_t v) { return _mm256_set1_epi32(v); }
  static void store_i8(int8_t* p, I a) {  // values in [-128, 127]: the saturating packs keep them
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w, w));
  }
};
#elif defined(LRK_ISA_NEON)
struct Simd {
#if defined(LRK_ISA_DOTPROD)
  static constexpr const char* name = "neon-dotprod";
#else
  static constexpr const char* name = "neon";
#endif
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

  using I = int32x4_t;
  static constexpr bool kOffset = false;
  static I izero() { return vdupq_n_s32(0); }
  static I load4(const int8_t* p) { return vreinterpretq_s32_s8(vld1q_s8(p)); }
  static I bcast4(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return vdupq_n_s32(v); }
#if defined(LRK_ISA_DOTPROD)
  static I dot4(I acc, I w, I x) { return vdotq_s32(acc, vreinterpretq_s8_s32(w), vreinterpretq_s8_s32(x)); }
#else
  // Without sdot: int16 products (each at most 127 x 127), summed in pairs, then the pairs of pairs.
  static I dot4(I acc, I w, I x) {
    const int8x16_t a = vreinterpretq_s8_s32(w), b = vreinterpretq_s8_s32(x);
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    const int32x4_t hi = vpaddlq_s16(vmull_high_s8(a, b));
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
  }
#endif
  static I iadd(I a, I b) { return vaddq_s32(a, b); }
  static I offset(const int32_t*) { return izero(); }
  static V to_float(I a) { return vcvtq_f32_s32(a); }
  static I to_int(V a) { return vcvtnq_s32_f32(a); }
  static I iset1(int32_t v) { return vdupq_n_s32(v); }
  static void store_i8(int8_t* p, I a) {
    const int8x8_t b = vmovn_s16(vcombine_s16(vmovn_s32(a), vmovn_s32(a)));
    vst1_lane_s32(reinterpret_cast<int32_t*>(p), vreinterpret_s32_s8(b), 0);
  }
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

  using I = int32_t;
  static constexpr bool kOffset = false;
  static I izero() { return 0; }
  static I load4(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }
  static I bcast4(const int8_t* p) { return load4(p); }
  static I dot4(I acc, I w, I x) {
    for (int b = 0; b < 4; ++b) acc += int32_t(int8_t(uint32_t(w) >> (8 * b))) * int8_t(uint32_t(x) >> (8 * b));
    return acc;
  }
  static I iadd(I a, I b) { return a + b; }
  static I offset(const int32_t*) { return 0; }
  static V to_float(I a) { return float(a); }
  static I to_int(V a) { return int32_t(__builtin_nearbyintf(a)); }
  static I iset1(int32_t v) { return v; }
  static void store_i8(int8_t* p, I a) { *p = int8_t(a); }
};
#endif

}  // namespace LRK_ISA_NS
}  // namespace lrk
