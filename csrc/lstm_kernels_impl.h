// The LSTM kernels, written once against the Simd interface (simd.h) and compiled once per ISA:
// each kernels_<isa>.cc defines its LRK_ISA_* macro, includes this file and exports the table.
#pragma once
#include <time.h>

#include <cstdint>

#include "kernel_table.h"
#include "simd.h"

namespace lrk {
namespace LRK_ISA_NS {

using V = Simd::V;
constexpr int W = Simd::W;
constexpr int P = 2 * W;                  // rows per packed panel: two vectors
constexpr int kBlockRows = W >= 16 ? 6 : 4;  // rows of x per GEMM block (accumulators fit the registers)

// ---- matrix products on packed panels --------------------------------------------------------

inline void finish(float* y, V v, bool accumulate) {
  Simd::store(y, accumulate ? Simd::add(Simd::load(y), v) : v);
}

// One panel at a time, columns unrolled by two: four FMA chains, enough for a product bound by the
// bandwidth of the cache level the weights sit in. Two panels per pass (eight chains, two streams)
// measured slower: the r = 128 streaming step took ~31 us instead of ~29 on an AMD EPYC (Zen 4).
void matvec(const float* x, const float* a, int mp, int k, float* y, bool accumulate) {
  for (int p = 0; p < mp / P; ++p) {
    const float* a0 = a + size_t(p) * k * P;
    V s0 = Simd::zero(), s1 = Simd::zero(), s2 = Simd::zero(), s3 = Simd::zero();
    int j = 0;
    for (; j + 1 < k; j += 2) {
      const V x0 = Simd::set1(x[j]), x1 = Simd::set1(x[j + 1]);
      const float* b0 = a0 + size_t(j) * P;
      s0 = Simd::fma(Simd::load(b0), x0, s0);
      s1 = Simd::fma(Simd::load(b0 + W), x0, s1);
      s2 = Simd::fma(Simd::load(b0 + P), x1, s2);
      s3 = Simd::fma(Simd::load(b0 + P + W), x1, s3);
    }
    if (j < k) {
      const V x0 = Simd::set1(x[j]);
      s0 = Simd::fma(Simd::load(a0 + size_t(j) * P), x0, s0);
      s1 = Simd::fma(Simd::load(a0 + size_t(j) * P + W), x0, s1);
    }
    float* yp = y + size_t(p) * P;
    finish(yp, Simd::add(s0, s2), accumulate);
    finish(yp + W, Simd::add(s1, s3), accumulate);
  }
}

// R rows of x against one panel: R x 2 accumulators, each panel vector loaded once per column.
template <int R>
void gemm_block(const float* x, int ldx, const float* ap, int k, float* y, int ldy, bool accumulate) {
  V s[R][2];
  for (int i = 0; i < R; ++i) s[i][0] = s[i][1] = Simd::zero();
  for (int j = 0; j < k; ++j) {
    const V a0 = Simd::load(ap + size_t(j) * P), a1 = Simd::load(ap + size_t(j) * P + W);
    for (int i = 0; i < R; ++i) {
      const V xi = Simd::set1(x[size_t(i) * ldx + j]);
      s[i][0] = Simd::fma(a0, xi, s[i][0]);
      s[i][1] = Simd::fma(a1, xi, s[i][1]);
    }
  }
  for (int i = 0; i < R; ++i) {
    finish(y + size_t(i) * ldy, s[i][0], accumulate);
    finish(y + size_t(i) * ldy + W, s[i][1], accumulate);
  }
}

void matmul(const float* x, int rows, int ldx, const float* a, int mp, int k, float* y, int ldy, bool accumulate) {
  if (rows == 1) return matvec(x, a, mp, k, y, accumulate);
  // Panels outer, row blocks inner: one panel (k x P floats) stays in L1/L2 while all rows pass.
  for (int p = 0; p < mp / P; ++p) {
    const float* ap = a + size_t(p) * k * P;
    int r = 0;
    for (; r + kBlockRows <= rows; r += kBlockRows)
      gemm_block<kBlockRows>(x + size_t(r) * ldx, ldx, ap, k, y + size_t(r) * ldy + p * P, ldy, accumulate);
    const float* xr = x + size_t(r) * ldx;
    float* yr = y + size_t(r) * ldy + p * P;
    switch (rows - r) {
      case 5: gemm_block<5>(xr, ldx, ap, k, yr, ldy, accumulate); break;
      case 4: gemm_block<4>(xr, ldx, ap, k, yr, ldy, accumulate); break;
      case 3: gemm_block<3>(xr, ldx, ap, k, yr, ldy, accumulate); break;
      case 2: gemm_block<2>(xr, ldx, ap, k, yr, ldy, accumulate); break;
      case 1: gemm_block<1>(xr, ldx, ap, k, yr, ldy, accumulate); break;
      default: break;
    }
  }
}

// ---- int8 products -----------------------------------------------------------------------------

// Each row of x (k values) as int8 with one scale: q = round(x / s) (ties to even), s = max |x| / 127,
// so q lies in [-127, 127]; stored as this path takes it (q + 128 as u8 where Simd::kOffset), zero up to kp.
void quantize(const float* x, int rows, int ldx, int k, int kp, int8_t* q, int ldq, float* scale) {
  const int32_t flip = Simd::kOffset ? 128 : 0;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + size_t(r) * ldx;
    int8_t* qr = q + size_t(r) * ldq;
    V mv = Simd::zero();
    int j = 0;
    for (; j + W <= k; j += W) {
      const V v = Simd::load(xr + j);
      mv = Simd::max(mv, Simd::max(v, Simd::sub(Simd::zero(), v)));
    }
    float lanes[W], m = 0.0f;
    Simd::store(lanes, mv);
    for (float l : lanes) m = l > m ? l : m;
    for (; j < k; ++j) m = xr[j] > m ? xr[j] : -xr[j] > m ? -xr[j] : m;
    const float inv = m > 0.0f ? 127.0f / m : 0.0f;
    scale[r] = m / 127.0f;
    const V iv = Simd::set1(inv);
    const Simd::I off = Simd::iset1(flip);
    for (j = 0; j + W <= k; j += W)
      Simd::store_i8(qr + j, Simd::iadd(Simd::to_int(Simd::mul(Simd::load(xr + j), iv)), off));
    for (; j < k; ++j) {
      const float v = xr[j] * inv;  // NaN (a non-finite x) becomes 0: converting it is undefined
      qr[j] = int8_t(int32_t(__builtin_nearbyintf(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v == v ? v : 0.0f)) + flip);
    }
    for (; j < kp; ++j) qr[j] = int8_t(flip);
  }
}

// The weights of one panel: for each group of 4 columns, P rows of 4 int8 (a row's 4 in one lane).
constexpr int kGroup = 4;

inline void finish_i8(float* y, Simd::I acc, float xs, const float* ws, bool accumulate) {
  finish(y, Simd::mul(Simd::to_float(acc), Simd::mul(Simd::set1(xs), Simd::load(ws))), accumulate);
}

// One row of x: two groups per pass, four accumulator chains.
void matvec_i8(const int8_t* q, float xs, const int8_t* a, const float* ws, const int32_t* rowsum, int mp, int kp,
               float* y, bool accumulate) {
  const int groups = kp / kGroup;
  for (int p = 0; p < mp / P; ++p) {
    const int8_t* a0 = a + size_t(p) * kp * P;
    Simd::I s0 = Simd::offset(rowsum + p * P), s1 = Simd::offset(rowsum + p * P + W), s2 = Simd::izero(),
            s3 = Simd::izero();
    int g = 0;
    for (; g + 1 < groups; g += 2) {
      const Simd::I x0 = Simd::bcast4(q + g * kGroup), x1 = Simd::bcast4(q + (g + 1) * kGroup);
      const int8_t* b0 = a0 + size_t(g) * kGroup * P;
      s0 = Simd::dot4(s0, Simd::load4(b0), x0);
      s1 = Simd::dot4(s1, Simd::load4(b0 + kGroup * W), x0);
      s2 = Simd::dot4(s2, Simd::load4(b0 + kGroup * P), x1);
      s3 = Simd::dot4(s3, Simd::load4(b0 + kGroup * (P + W)), x1);
    }
    if (g < groups) {
      const Simd::I x0 = Simd::bcast4(q + g * kGroup);
      const int8_t* b0 = a0 + size_t(g) * kGroup * P;
      s0 = Simd::dot4(s0, Simd::load4(b0), x0);
      s1 = Simd::dot4(s1, Simd::load4(b0 + kGroup * W), x0);
    }
    float* yp = y + size_t(p) * P;
    finish_i8(yp, Simd::iadd(s0, s2), xs, ws + p * P, accumulate);
    finish_i8(yp + W, Simd::iadd(s1, s3), xs, ws + p * P + W, accumulate);
  }
}

// R rows of x against one panel, as gemm_block.
template <int R>
void gemm_block_i8(const int8_t* q, int ldq, const float* xs, const int8_t* ap, const float* ws,
                   const int32_t* rowsum, int kp, float* y, int ldy, bool accumulate) {
  Simd::I s[R][2];
  for (int i = 0; i < R; ++i) s[i][0] = Simd::offset(rowsum), s[i][1] = Simd::offset(rowsum + W);
  for (int g = 0; g < kp / kGroup; ++g) {
    const Simd::I a0 = Simd::load4(ap + size_t(g) * kGroup * P), a1 = Simd::load4(ap + size_t(g) * kGroup * P + kGroup * W);
    for (int i = 0; i < R; ++i) {
      const Simd::I xi = Simd::bcast4(q + size_t(i) * ldq + g * kGroup);
      s[i][0] = Simd::dot4(s[i][0], a0, xi);
      s[i][1] = Simd::dot4(s[i][1], a1, xi);
    }
  }
  for (int i = 0; i < R; ++i) {
    finish_i8(y + size_t(i) * ldy, s[i][0], xs[i], ws, accumulate);
    finish_i8(y + size_t(i) * ldy + W, s[i][1], xs[i], ws + W, accumulate);
  }
}

void matmul_i8(const int8_t* q, int rows, int ldq, const float* xs, const int8_t* a, const float* ws,
               const int32_t* rowsum, int mp, int kp, float* y, int ldy, bool accumulate) {
  if (rows == 1) return matvec_i8(q, xs[0], a, ws, rowsum, mp, kp, y, accumulate);
  for (int p = 0; p < mp / P; ++p) {
    const int8_t* ap = a + size_t(p) * kp * P;
    const float* wp = ws + p * P;
    const int32_t* sp = rowsum + p * P;
    int r = 0;
    for (; r + kBlockRows <= rows; r += kBlockRows)
      gemm_block_i8<kBlockRows>(q + size_t(r) * ldq, ldq, xs + r, ap, wp, sp, kp, y + size_t(r) * ldy + p * P, ldy,
                                accumulate);
    const int8_t* qr = q + size_t(r) * ldq;
    float* yr = y + size_t(r) * ldy + p * P;
    switch (rows - r) {
      case 5: gemm_block_i8<5>(qr, ldq, xs + r, ap, wp, sp, kp, yr, ldy, accumulate); break;
      case 4: gemm_block_i8<4>(qr, ldq, xs + r, ap, wp, sp, kp, yr, ldy, accumulate); break;
      case 3: gemm_block_i8<3>(qr, ldq, xs + r, ap, wp, sp, kp, yr, ldy, accumulate); break;
      case 2: gemm_block_i8<2>(qr, ldq, xs + r, ap, wp, sp, kp, yr, ldy, accumulate); break;
      case 1: gemm_block_i8<1>(qr, ldq, xs + r, ap, wp, sp, kp, yr, ldy, accumulate); break;
      default: break;
    }
  }
}

// ---- gate non-linearities ----------------------------------------------------------------------

// e^x after Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, and e^r = 1 + r + r^2 p(r), p of degree 5.
// Sets n and returns e^r - 1 = r + r^2 p(r), which keeps its relative accuracy near 0 (for expm1).
// x must lie in [-87, 88].
inline V exp_reduced(V x, V& n) {
  n = Simd::floor(Simd::fma(x, Simd::set1(1.44269504088896341f), Simd::set1(0.5f)));
  x = Simd::fma(n, Simd::set1(-0.693359375f), x);
  x = Simd::fma(n, Simd::set1(2.12194440e-4f), x);
  V p = Simd::set1(1.9875691500e-4f);
  p = Simd::fma(p, x, Simd::set1(1.3981999507e-3f));
  p = Simd::fma(p, x, Simd::set1(8.3334519073e-3f));
  p = Simd::fma(p, x, Simd::set1(4.1665795894e-2f));
  p = Simd::fma(p, x, Simd::set1(1.6666665459e-1f));
  p = Simd::fma(p, x, Simd::set1(5.0000001201e-1f));
  return Simd::fma(p, Simd::mul(x, x), x);
}

// Relative error about 2e-7 on [-87, 88]; inputs outside are clamped.
inline V exp_v(V x) {
  V n;
  const V q = exp_reduced(Simd::min(Simd::max(x, Simd::set1(-87.0f)), Simd::set1(88.0f)), n);
  return Simd::scale2(Simd::add(q, Simd::set1(1.0f)), n);
}

inline V sigmoid_v(V x) {
  const V one = Simd::set1(1.0f);
  return Simd::recip(Simd::add(one, exp_v(Simd::sub(Simd::zero(), x))));
}

// tanh x = e / (e + 2) with e = e^2x - 1 = 2^n (e^r - 1) + (2^n - 1): e keeps its relative accuracy
// near 0, where the usual 1 - 2 / (e^2x + 1) cancels, so one formula serves every x, with half the
// operations of a separate polynomial for small |x| and a select; beyond |x| = 9, tanh x rounds to
// +-1, and the clamp there keeps e + 2 far from overflow.
inline V tanh_v(V x) {
  x = Simd::min(Simd::max(x, Simd::set1(-9.0f)), Simd::set1(9.0f));
  V n;
  const V q = exp_reduced(Simd::add(x, x), n);
  const V s = Simd::scale2(Simd::set1(1.0f), n);
  const V e = Simd::fma(s, q, Simd::sub(s, Simd::set1(1.0f)));
  return Simd::mul(e, Simd::recip(Simd::add(e, Simd::set1(2.0f))));
}

template <V (*F)(V)>
void apply(const float* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + W <= n; i += W) Simd::store(y + i, F(Simd::load(x + i)));
  if (i < n) {  // the tail through a zero-padded vector
    float buf[W] = {};
    for (size_t j = i; j < n; ++j) buf[j - i] = x[j];
    Simd::store(buf, F(Simd::load(buf)));
    for (size_t j = i; j < n; ++j) y[j] = buf[j - i];
  }
}

void sigmoid(const float* x, float* y, size_t n) { apply<sigmoid_v>(x, y, n); }
void tanh(const float* x, float* y, size_t n) { apply<tanh_v>(x, y, n); }

// The cell of `rows` sequences: c = sigma(f) c + sigma(i) tanh(g), h = sigma(o) tanh(c), gates plus
// bias. Two passes, the second over c alone, with sigma(o) parked in h between them: each iteration's
// chain of dependent operations is then half as long, and the core overlaps more of them (H = 512:
// 0.78 us instead of 0.89 in one pass on an AMD EPYC, Zen 4).
void cell(const float* gates, int ldg, int rows, int hp, const float* bias, float* c, float* h, int ldh) {
  for (int r = 0; r < rows; ++r) {
    const float* g = gates + size_t(r) * ldg;
    float* cr = c + size_t(r) * ldh;
    float* hr = h + size_t(r) * ldh;
    for (int j = 0; j < hp; j += W) {
      const V i = sigmoid_v(Simd::add(Simd::load(g + j), Simd::load(bias + j)));
      const V f = sigmoid_v(Simd::add(Simd::load(g + hp + j), Simd::load(bias + hp + j)));
      const V u = tanh_v(Simd::add(Simd::load(g + 2 * hp + j), Simd::load(bias + 2 * hp + j)));
      Simd::store(cr + j, Simd::fma(f, Simd::load(cr + j), Simd::mul(i, u)));
      Simd::store(hr + j, sigmoid_v(Simd::add(Simd::load(g + 3 * hp + j), Simd::load(bias + 3 * hp + j))));
    }
    for (int j = 0; j < hp; j += W) Simd::store(hr + j, Simd::mul(Simd::load(hr + j), tanh_v(Simd::load(cr + j))));
  }
}

// ---- framing ------------------------------------------------------------------------------------

// (y[j] - mean) - p (y[j-1] - mean) = y[j] - p y[j-1] - (1 - p) mean: one pass after the mean.
void prepare_frames(const float* x, int rows, int shift, int length, float scale, float preemph,
                    const float* window, float* out, int ldo) {
  const V s = Simd::set1(scale), p = Simd::set1(preemph);
  for (int t = 0; t < rows; ++t) {
    const float* xt = x + size_t(t) * shift;
    float* o = out + size_t(t) * ldo;
    V acc = Simd::zero();
    int j = 0;
    for (; j + W <= length; j += W) acc = Simd::add(acc, Simd::load(xt + j));
    float sum = Simd::sum(acc);
    for (; j < length; ++j) sum += xt[j];
    const float mean = scale * sum / float(length), offset = (1.0f - preemph) * mean;
    const V off = Simd::set1(offset);
    o[0] = window[0] * (scale * xt[0] - preemph * scale * xt[0] - offset);
    for (j = 1; j + W <= length; j += W) {
      const V y = Simd::mul(s, Simd::load(xt + j)), prev = Simd::mul(s, Simd::load(xt + j - 1));
      Simd::store(o + j, Simd::mul(Simd::load(window + j), Simd::sub(Simd::fnma(p, prev, y), off)));
    }
    for (; j < length; ++j) o[j] = window[j] * (scale * xt[j] - preemph * scale * xt[j - 1] - offset);
  }
}

// ---- power spectra ------------------------------------------------------------------------------

// |DFT|^2, bins 0..n/2, of `rows` real frames (`length` samples each, row stride ldx, zero-padded to
// n, a power of two): radix-2 decimation in time, one frame per SIMD lane, so every butterfly is
// a few vector operations whatever the frame. tw: n/2 twiddles e^(-2 pi i j / n) as (re, im) pairs;
// rev: the n bit-reversed indices; scratch: 2 n W floats; out: row stride ldo.
//
// A real frame of n samples as a complex one of n/2 (even samples real, odd imaginary), transformed
// and separated by the symmetry of real transforms: with Z its transform, the even samples' is
// E[k] = (Z[k] + Z*[m]) / 2 and the odd samples' O[k] = (Z[k] - Z*[m]) / 2i, m = n/2 - k, and
// X[k] = E[k] + e^(-2 pi i k / n) O[k]. Half the butterflies of the full complex transform, and rounding
// relative to the frame's own energy. The n/2-point bit reversal is rev[p] / 2 for p < n/2.
void power_spectra(const float* x, int rows, int ldx, int length, int n, const float* tw, const int* rev,
                   float* scratch, float* out, int ldo) {
  const int M = n / 2;
  float* re = scratch;
  float* im = scratch + size_t(M) * W;
  for (int r0 = 0; r0 < rows; r0 += W) {
    const int lanes = rows - r0 < W ? rows - r0 : W;
    for (int p = 0; p < M; ++p) {
      const int q = rev[p];  // even
      for (int l = 0; l < W; ++l) {
        const float* row = x + size_t(r0 + l) * ldx;
        re[size_t(p) * W + l] = l < lanes && q < length ? row[q] : 0.0f;
        im[size_t(p) * W + l] = l < lanes && q + 1 < length ? row[q + 1] : 0.0f;
      }
    }
    for (int half = 1; half < M; half *= 2) {
      const int step = n / (2 * half);  // twiddle k M / (2 half) of n/2 points is twiddle k step of n
      for (int k = 0; k < half; ++k) {
        const V wr = Simd::set1(tw[2 * k * step]), wi = Simd::set1(tw[2 * k * step + 1]);
        for (int a = k; a < M; a += 2 * half) {
          float *ar = re + size_t(a) * W, *ai = im + size_t(a) * W;
          float *br = ar + size_t(half) * W, *bi = ai + size_t(half) * W;
          const V xr = Simd::load(br), xi = Simd::load(bi);
          const V tr = Simd::fnma(xi, wi, Simd::mul(xr, wr)), ti = Simd::fma(xr, wi, Simd::mul(xi, wr));
          const V yr = Simd::load(ar), yi = Simd::load(ai);
          Simd::store(br, Simd::sub(yr, tr));
          Simd::store(bi, Simd::sub(yi, ti));
          Simd::store(ar, Simd::add(yr, tr));
          Simd::store(ai, Simd::add(yi, ti));
        }
      }
    }
    const V half_v = Simd::set1(0.5f);
    for (int k = 0; k <= M; ++k) {
      const int kk = k % M, m = (M - k) % M;
      const V a = Simd::load(re + size_t(kk) * W), b = Simd::load(im + size_t(kk) * W);
      const V c = Simd::load(re + size_t(m) * W), d = Simd::load(im + size_t(m) * W);
      const V er = Simd::mul(half_v, Simd::add(a, c)), ei = Simd::mul(half_v, Simd::sub(b, d));
      const V orr = Simd::mul(half_v, Simd::add(b, d)), oi = Simd::mul(half_v, Simd::sub(c, a));
      const V wr = Simd::set1(k < M ? tw[2 * k] : -1.0f), wi = Simd::set1(k < M ? tw[2 * k + 1] : 0.0f);
      const V xr = Simd::add(er, Simd::fnma(wi, oi, Simd::mul(wr, orr)));
      const V xi = Simd::add(ei, Simd::fma(wi, orr, Simd::mul(wr, oi)));
      float p[W];
      Simd::store(p, Simd::fma(xr, xr, Simd::mul(xi, xi)));
      for (int l = 0; l < lanes; ++l) out[size_t(r0 + l) * ldo + k] = p[l];
    }
  }
}

// ---- location-aware attention -----------------------------------------------------------------

// e[t] = v . tanh(keys[t] + q + sum_c f[c][t] L[c]) for t < frames, each row of z kept in registers
// blocks of W: the keys (frames x ap), q, v and L[c] (channels x ap) padded with zeros to ap.
// Up to kBlock vectors of one frame's pre-activation at once: their FMA chains over the channels
// are independent, so they overlap instead of waiting on each other's latency; the blocking changes
// neither the per-lane arithmetic nor its order.
constexpr int kBlock = 8;

template <int B>
inline V energy_block(const float* kt, const float* q, const float* f, int ldf, int t, const float* loc, int channels,
                      const float* v, int ap, int a, V acc) {
  V z[B];
  for (int b = 0; b < B; ++b) z[b] = Simd::add(Simd::load(kt + a + b * W), Simd::load(q + a + b * W));
  for (int c = 0; c < channels; ++c) {
    const V fc = Simd::set1(f[size_t(c) * ldf + t]);
    const float* lc = loc + size_t(c) * ap + a;
    for (int b = 0; b < B; ++b) z[b] = Simd::fma(fc, Simd::load(lc + b * W), z[b]);
  }
  for (int b = 0; b < B; ++b) acc = Simd::fma(tanh_v(z[b]), Simd::load(v + a + b * W), acc);
  return acc;
}

void attention_energies(const float* keys, const float* q, const float* f, int ldf, const float* loc, int channels,
                        const float* v, int ap, int frames, float* e) {
  for (int t = 0; t < frames; ++t) {
    const float* kt = keys + size_t(t) * ap;
    V acc = Simd::zero();
    int a = 0;
    for (; a + kBlock * W <= ap; a += kBlock * W)
      acc = energy_block<kBlock>(kt, q, f, ldf, t, loc, channels, v, ap, a, acc);
    for (; a < ap; a += W) acc = energy_block<1>(kt, q, f, ldf, t, loc, channels, v, ap, a, acc);
    e[t] = Simd::sum(acc);
  }
}

// Four output vectors at a time: independent FMA chains over the kernel taps.
void location_conv(const float* x, int frames, const float* w, int channels, int kernel, float* f, int ldf) {
  constexpr int B = 4;
  const int n = (frames + W - 1) / W * W;
  for (int c = 0; c < channels; ++c) {
    const float* wc = w + size_t(c) * kernel;
    float* fc = f + size_t(c) * ldf;
    int t = 0;
    for (; t + B * W <= n; t += B * W) {
      V acc[B] = {Simd::zero(), Simd::zero(), Simd::zero(), Simd::zero()};
      for (int j = 0; j < kernel; ++j) {
        const V wj = Simd::set1(wc[j]);
        for (int b = 0; b < B; ++b) acc[b] = Simd::fma(wj, Simd::load(x + t + b * W + j), acc[b]);
      }
      for (int b = 0; b < B; ++b) Simd::store(fc + t + b * W, acc[b]);
    }
    for (; t < n; t += W) {
      V acc = Simd::zero();
      for (int j = 0; j < kernel; ++j) acc = Simd::fma(Simd::set1(wc[j]), Simd::load(x + t + j), acc);
      Simd::store(fc + t, acc);
    }
  }
}

// ---- roofline probes ---------------------------------------------------------------------------

inline double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

volatile float g_sink;

// The fastest of repeated timings of `pass`, repeated for at least `min_seconds`.
template <class F>
double best_seconds(F pass, double min_seconds) {
  double best = 1e30;
  const double start = now();
  do {
    const double t0 = now();
    pass();
    const double dt = now() - t0;
    if (dt < best) best = dt;
  } while (now() - start < min_seconds);
  return best;
}

// Makes the accumulators observable, so the compiler cannot drop the work that fed them.
template <int N>
void keep(const V (&s)[N]) {
  float total = 0.f;
  for (const V& v : s) total += Simd::sum(v);
  g_sink = total;
}

// Best pass time over repeated sums of one buffer: its read bandwidth from the cache level it fits.
double read_gbps(size_t bytes, double min_seconds) {
  const size_t n = (bytes / sizeof(float) + 8 * W - 1) / (8 * W) * (8 * W);
  float* buf = static_cast<float*>(alloc_buffer(n * sizeof(float)));
  if (!buf) return 0.0;
  for (size_t i = 0; i < n; ++i) buf[i] = 1.0f;
  const int passes = int(1 + (1u << 22) / (n * sizeof(float)));  // >= 4 MB read per timing
  V s[8];
  for (V& v : s) v = Simd::zero();
  const double best = best_seconds([&] {
    for (int r = 0; r < passes; ++r)
      for (size_t i = 0; i < n; i += 8 * W)
        for (int u = 0; u < 8; ++u) s[u] = Simd::add(s[u], Simd::load(buf + i + u * W));
  }, min_seconds);
  keep(s);
  free_buffer(buf);
  return double(n) * sizeof(float) * passes / best / 1e9;
}

// Twelve independent FMA chains: enough to fill two FMA pipes of latency four or more.
double peak_gflops(double min_seconds) {
  V s[12];
  for (int u = 0; u < 12; ++u) s[u] = Simd::set1(float(u));
  const V a = Simd::set1(0.999999f), b = Simd::set1(1e-7f);
  const long iters = 1 << 16;
  const double best = best_seconds([&] {
    for (long it = 0; it < iters; ++it)
      for (int u = 0; u < 12; ++u) s[u] = Simd::fma(s[u], a, b);
  }, min_seconds);
  keep(s);
  return double(iters) * 12 * W * 2 / best / 1e9;
}

// The int8 counterpart: twelve independent dot4 chains, four multiply-adds per lane each (the
// VNNI peak on AVX-512; on AVX2, the four instructions that stand for vpdpbusd).
double peak_i8_gmacs(double min_seconds) {
  alignas(64) int8_t buf[kGroup * W];
  for (int i = 0; i < kGroup * W; ++i) buf[i] = int8_t(i % 7 - 3);
  const Simd::I w = Simd::load4(buf), x = Simd::bcast4(buf);
  Simd::I s[12];
  for (Simd::I& v : s) v = Simd::izero();
  const long iters = 1 << 16;
  const double best = best_seconds([&] {
    for (long it = 0; it < iters; ++it)
      for (int u = 0; u < 12; ++u) s[u] = Simd::dot4(s[u], w, x);
  }, min_seconds);
  V f[12];
  for (int u = 0; u < 12; ++u) f[u] = Simd::to_float(s[u]);
  keep(f);
  return double(iters) * 12 * W * kGroup / best / 1e9;
}

const Kernels kTable = {Simd::name, W, P, &matmul, &quantize, &matmul_i8, &cell, &sigmoid, &tanh, &attention_energies, &location_conv,
                        &prepare_frames, &power_spectra, &read_gbps, &peak_gflops, &peak_i8_gmacs};

}  // namespace LRK_ISA_NS
}  // namespace lrk
