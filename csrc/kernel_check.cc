// Checks the gate non-linearities, the decoder and the front-end kernels of every path this CPU runs
// (sigmoid and tanh, attention energies and location convolution, framing, power spectra) and the
// int8 products (activation quantisation, matmul_i8 of one row and of blocks of rows) against plain
// double-precision references, and prints the worst relative errors as JSON: how the NEON paths are
// checked under qemu, where no Python runs.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lstm_kernels.h"

namespace {

// Over [-30, 30] in even steps and down to 1e-8 in geometric ones, both signs: sigmoid, then tanh.
std::pair<double, double> activations_error(const lrk::Kernels& k) {
  std::vector<float> x;
  for (int i = 0; i <= 200000; ++i) x.push_back(-30.0f + 60.0f * float(i) / 200000.0f);
  for (int i = 0; i < 2000; ++i) {
    const float v = float(1e-8 * std::pow(30.0 / 1e-8, i / 1999.0));
    x.push_back(v);
    x.push_back(-v);
  }
  std::vector<float> y(x.size());
  double sig = 0, tanh = 0;
  k.sigmoid(x.data(), y.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = 1.0 / (1.0 + std::exp(-double(x[i])));
    sig = std::fmax(sig, std::fabs(y[i] - want) / want);
  }
  k.tanh(x.data(), y.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::tanh(double(x[i]));
    if (want != 0.0) tanh = std::fmax(tanh, std::fabs(y[i] - want) / std::fabs(want));
  }
  return {sig, tanh};
}

double energies_error(const lrk::Kernels& k, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 0.5f);
  const int frames = 37, channels = 5, att = 9 * k.width + 3,  // a block of 8 vectors and single ones
            ap = lrk::round_up(att, k.width);
  std::vector<float> keys(size_t(frames) * ap, 0.0f), q(ap, 0.0f), v(ap, 0.0f), loc(size_t(channels) * ap, 0.0f),
      f(size_t(channels) * frames), e(frames);
  for (int a = 0; a < att; ++a) {
    q[a] = g(rng);
    v[a] = g(rng);
    for (int t = 0; t < frames; ++t) keys[size_t(t) * ap + a] = g(rng);
    for (int c = 0; c < channels; ++c) loc[size_t(c) * ap + a] = g(rng);
  }
  for (float& x : f) x = g(rng);
  k.attention_energies(keys.data(), q.data(), f.data(), frames, loc.data(), channels, v.data(), ap, frames, e.data());
  double worst = 0;
  for (int t = 0; t < frames; ++t) {
    double want = 0, scale = 0;
    for (int a = 0; a < att; ++a) {
      double z = double(keys[size_t(t) * ap + a]) + q[a];
      for (int c = 0; c < channels; ++c) z += double(f[size_t(c) * frames + t]) * loc[size_t(c) * ap + a];
      want += std::tanh(z) * v[a];
      scale += std::fabs(v[a]);
    }
    worst = std::fmax(worst, std::fabs(e[t] - want) / scale);
  }
  return worst;
}

double conv_error(const lrk::Kernels& k, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 0.5f);
  const int frames = 5 * k.width + 3, n = lrk::round_up(frames, k.width), channels = 3, kernel = 7;  // blocked and single
  std::vector<float> x(size_t(n) + kernel - 1, 0.0f), w(size_t(channels) * kernel), f(size_t(channels) * n);
  for (int t = 0; t < frames + kernel - 1; ++t) x[t] = g(rng);
  for (float& v : w) v = g(rng);
  k.location_conv(x.data(), frames, w.data(), channels, kernel, f.data(), n);
  double worst = 0;
  for (int c = 0; c < channels; ++c)
    for (int t = 0; t < frames; ++t) {
      double want = 0, scale = 0;
      for (int j = 0; j < kernel; ++j) {
        const double p = double(w[size_t(c) * kernel + j]) * x[t + j];
        want += p;
        scale += std::fabs(p);
      }
      const double err = std::fabs(f[size_t(c) * n + t] - want) / scale;
      if (err > worst) worst = err;  // not fmax: gcc 12 for aarch64 crashes vectorising that reduction here
    }
  return worst;
}

double frames_error(const lrk::Kernels& k, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int rows = 3, shift = 7, length = 2 * k.width + 5;  // vectors and a tail
  const float scale = 3.0f, p = 0.97f;
  std::vector<float> x(size_t(rows - 1) * shift + length), w(length), out(size_t(rows) * length);
  for (float& v : x) v = u(rng);
  for (float& v : w) v = u(rng);
  k.prepare_frames(x.data(), rows, shift, length, scale, p, w.data(), out.data(), length);
  double worst = 0;
  for (int t = 0; t < rows; ++t) {
    const float* xt = x.data() + size_t(t) * shift;
    double mean = 0, size = 0;
    for (int j = 0; j < length; ++j) mean += double(scale) * xt[j] / length;
    std::vector<double> y(length);
    for (int j = 0; j < length; ++j) y[j] = double(scale) * xt[j] - mean;
    for (int j = 0; j < length; ++j) size = std::fmax(size, std::fabs(y[j]));
    for (int j = 0; j < length; ++j) {
      const double want = w[j] * (y[j] - double(p) * y[j > 0 ? j - 1 : 0]);
      const double err = std::fabs(out[size_t(t) * length + j] - want) / size;
      if (err > worst) worst = err;
    }
  }
  return worst;
}

double spectra_error(const lrk::Kernels& k, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int n = 64, length = 50, rows = 2 * k.width + 1, bins = n / 2 + 1;
  std::vector<float> x(size_t(rows) * length), tw(n), scratch(size_t(2) * n * k.width), out(size_t(rows) * bins);
  std::vector<int> rev(n);
  for (float& s : x) s = u(rng);
  for (int j = 0; j < n / 2; ++j) {
    tw[2 * j] = float(std::cos(2 * M_PI * j / n));
    tw[2 * j + 1] = float(-std::sin(2 * M_PI * j / n));
  }
  for (int i = 0; i < n; ++i)
    for (int b = 0; b < 6; ++b) rev[i] |= ((i >> b) & 1) << (5 - b);
  k.power_spectra(x.data(), rows, length, length, n, tw.data(), rev.data(), scratch.data(), out.data(), bins);
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    double energy = 0;
    for (int j = 0; j < length; ++j) energy += double(x[size_t(r) * length + j]) * x[size_t(r) * length + j];
    for (int b = 0; b < bins; ++b) {
      double re = 0, im = 0;
      for (int j = 0; j < length; ++j) {
        re += x[size_t(r) * length + j] * std::cos(2 * M_PI * b * j / n);
        im -= x[size_t(r) * length + j] * std::sin(2 * M_PI * b * j / n);
      }
      worst = std::fmax(worst, std::fabs(out[size_t(r) * bins + b] - (re * re + im * im)) / (energy * length));
    }
  }
  return worst;
}

// Activation quantisation: the worst |q - x / s| over rows of every scale (0.5 is exact rounding);
// -1 when a scale is not max |x| / 127 or a value leaves [-127, 127].
double quantize_error(const lrk::Kernels& k, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int rows = 5, cols = 3 * k.width + 5, kp = lrk::round_up(cols, 4);
  std::vector<float> x(size_t(rows) * cols), scale(rows);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cols; ++j) x[size_t(r) * cols + j] = r == 4 ? 0.0f : g(rng) * std::pow(10.0f, float(r - 2));
  std::vector<int8_t> q(size_t(rows) * kp);
  k.quantize(x.data(), rows, cols, cols, kp, q.data(), kp, scale.data());
  const int flip = k.isa == std::string("avx512") ? 128 : 0;  // the VNNI path's u8 = q + 128
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    double peak = 0;
    for (int j = 0; j < cols; ++j) peak = std::fabs(double(x[size_t(r) * cols + j])) > peak ? std::fabs(double(x[size_t(r) * cols + j])) : peak;
    if (std::fabs(scale[r] - peak / 127) > 1e-6 * peak) return -1;
    for (int j = 0; j < kp; ++j) {
      const int v = (flip ? int(uint8_t(q[size_t(r) * kp + j])) : int(q[size_t(r) * kp + j])) - flip;
      if (v < -127 || v > 127 || (j >= cols && v != 0)) return -1;
      if (j < cols && peak > 0) {
        const double err = std::fabs(v - x[size_t(r) * cols + j] / double(scale[r]));
        if (err > worst) worst = err;  // not fmax: gcc 12 for aarch64 crashes vectorising that reduction
      }
    }
  }
  return worst;
}

// matmul_i8 against the same quantised arithmetic in double: the path's own quantised x and its scales,
// the packed weights' integers and scales; relative to the sum of the products' magnitudes.
double matmul_i8_error(const lrk::Kernels& k, std::mt19937& rng, int rows) {
  std::uniform_int_distribution<int> wi(-127, 127);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int m = 2 * k.panel + 3, cols = 4 * 9 + 3, kp = lrk::round_up(cols, 4);  // a padded panel; an odd group count
  std::vector<float> w(size_t(m) * cols), ws(m), x(size_t(rows) * cols), xs(rows);
  for (int i = 0; i < m; ++i) {
    ws[i] = 0.01f * float(i + 1);
    for (int j = 0; j < cols; ++j) w[size_t(i) * cols + j] = float(wi(rng)) * ws[i];
    w[size_t(i) * cols + i % cols] = (i % 2 ? 127.0f : -127.0f) * ws[i];  // each row's peak is its scale's
  }
  for (float& v : x) v = g(rng);
  const lrk::Packed8 a = lrk::pack8(k, w.data(), m, cols, cols);
  std::vector<int8_t> q(size_t(rows) * kp);
  k.quantize(x.data(), rows, cols, cols, kp, q.data(), kp, xs.data());
  std::vector<float> y(size_t(rows) * a.mp, 1.0f);
  k.matmul_i8(q.data(), rows, kp, xs.data(), a.data.data(), a.scale.data(), a.rowsum.data(), a.mp, a.kp, y.data(), a.mp,
              true);
  const int flip = k.isa == std::string("avx512") ? 128 : 0;
  double worst = 0;
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < a.mp; ++i) {
      double want = 0, size = 0;
      for (int j = 0; j < cols && i < m; ++j) {
        const int qv = (flip ? int(uint8_t(q[size_t(r) * kp + j])) : int(q[size_t(r) * kp + j])) - flip;
        const double p = double(qv) * std::lround(w[size_t(i) * cols + j] / ws[i]);
        want += p;
        size += std::fabs(p);
      }
      want = 1.0 + want * xs[r] * double(i < m ? a.scale[i] : 0.0f);
      size = 1.0 + size * xs[r] * double(i < m ? a.scale[i] : 0.0f);
      const double err = std::fabs(y[size_t(r) * a.mp + i] - want) / size;
      if (err > worst) worst = err;
    }
  return worst;
}

}  // namespace

int main() {
  std::string json = "{\"paths\": {";
  bool first = true;
  for (const std::string& isa : lrk::available_isas()) {
    const lrk::Kernels& k = lrk::kernels(isa);
    std::mt19937 rng(7);
    char buf[500];
    const auto [sigmoid, tanh] = activations_error(k);
    const double energies = energies_error(k, rng), conv = conv_error(k, rng), frames = frames_error(k, rng),
                 spectra = spectra_error(k, rng), quant = quantize_error(k, rng), mv = matmul_i8_error(k, rng, 1),
                 mm = matmul_i8_error(k, rng, 2 * 6 + 5);  // full blocks of rows and every remainder size
    std::snprintf(buf, sizeof buf,
                  "%s\"%s\": {\"sigmoid\": %.3g, \"tanh\": %.3g, \"attention_energies\": %.3g, "
                  "\"location_conv\": %.3g, \"prepare_frames\": %.3g, \"power_spectra\": %.3g, "
                  "\"quantize\": %.3g, \"matvec_i8\": %.3g, \"matmul_i8\": %.3g}",
                  first ? "" : ", ", isa.c_str(), sigmoid, tanh, energies, conv, frames, spectra, quant, mv, mm);
    json += buf;
    first = false;
  }
  std::printf("%s}}\n", json.c_str());
  return 0;
}
