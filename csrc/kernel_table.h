// The kernels one ISA provides, as a table of plain functions. Every kernel works on raw float
// pointers: the ISA files (kernels_<isa>.cc) include this header and no standard-library
// templates, so no code built with one ISA's flags can leak into another path through the linker.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lrk {

struct Kernels {
  const char* isa;
  int width;  // floats per SIMD vector
  int panel;  // rows per packed panel (see Packed)

  // y[r][0..mp) = (accumulate ? y : 0) + x[r][0..k) . A^T for r < rows; `a` is a Packed's data.
  void (*matmul)(const float* x, int rows, int ldx, const float* a, int mp, int k, float* y, int ldy,
                 bool accumulate);
  // int8: each row r < rows of x (k values, stride ldx) to int8 q (stride ldq, zero-padded to kp, a
  // multiple of 4) with scale[r] = max |x| / 127, encoded as this path's matmul_i8 takes it.
  void (*quantize)(const float* x, int rows, int ldx, int k, int kp, int8_t* q, int ldq, float* scale);
  // y[r][i] = (accumulate ? y : 0) + xs[r] ws[i] sum_j q[r][j] A[i][j], the sum exact in int32; `a` is
  // a Packed8's data (rows' weights in [-127, 127]), ws its row scales, rowsum its row sums.
  void (*matmul_i8)(const int8_t* q, int rows, int ldq, const float* xs, const int8_t* a, const float* ws,
                    const int32_t* rowsum, int mp, int kp, float* y, int ldy, bool accumulate);
  // The fused LSTM cell for `rows` sequences: gates (rows x ldg) hold the blocks i, f, g, o of
  // `hp` values each (hp a multiple of `width`), to which the cell adds bias (4 hp values, the same
  // for every row); c and h (rows x ldh) are updated in place.
  void (*cell)(const float* gates, int ldg, int rows, int hp, const float* bias, float* c, float* h, int ldh);
  // Element-wise, any n; exposed so that tests can check the approximations.
  void (*sigmoid)(const float* x, float* y, size_t n);
  void (*tanh)(const float* x, float* y, size_t n);
  // Location-aware attention energies (csrc/decoder.h): e[t] = v . tanh(keys[t] + q + sum_c f[c][t] L[c])
  // for t < frames; keys (frames x ap), q, v, L (channels x ap) zero-padded to ap, a multiple of `width`.
  void (*attention_energies)(const float* keys, const float* q, const float* f, int ldf, const float* loc,
                             int channels, const float* v, int ap, int frames, float* e);
  // The attention's location features: f[c][t] = sum_j w[c][j] x[t + j] for c < channels and t < T,
  // T = frames rounded up to `width`: x holds T + kernel - 1 values (zero-padded), ldf >= T.
  void (*location_conv)(const float* x, int frames, const float* w, int channels, int kernel, float* f, int ldf);
  // Kaldi's framing for `rows` frames of x (frame t starts at t * shift): y = scale * x minus its mean,
  // then out[t][j] = window[j] * (y[j] - preemph * y[j - 1]) (y[-1] = y[0]) for j < length.
  void (*prepare_frames)(const float* x, int rows, int shift, int length, float scale, float preemph,
                         const float* window, float* out, int ldo);
  // |DFT|^2, bins 0..n/2, of `rows` real frames of `length` samples zero-padded to n (a power of two);
  // tw: n/2 twiddles e^(-2 pi i j / n) as (re, im); rev: bit-reversed indices; scratch: 2 n width floats.
  void (*power_spectra)(const float* x, int rows, int ldx, int length, int n, const float* tw, const int* rev,
                        float* scratch, float* out, int ldo);
  // Roofline probes: read bandwidth over a buffer of `bytes` (GB/s) and peak FMA throughput (GFLOP/s).
  double (*read_gbps)(size_t bytes, double min_seconds);
  double (*peak_gflops)(double min_seconds);
  double (*peak_i8_gmacs)(double min_seconds);  // int8 multiply-adds per second (/1e9) of matmul_i8's core
};

// Memory for weights, scratch and probes: 64-byte aligned; from 1 MB up, 2 MB aligned and backed by
// transparent huge pages where Linux offers them (no TLB misses, and no L2 set conflicts between 4 KB
// pages that land differently in every process, which made timings vary by 20%). Free with free_buffer.
void* alloc_buffer(size_t bytes);
void free_buffer(void* p);

// One table per ISA this build holds; each returns nullptr where the build lacks that ISA.
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
const Kernels* kernels_neon();
const Kernels* kernels_neon_dotprod();
const Kernels* kernels_scalar();

}  // namespace lrk
