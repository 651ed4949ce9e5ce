#include "frontend.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace lrk {
namespace {

constexpr float kLogFloor = 1.1920929e-07f;  // torch.finfo(torch.float32).eps, Kaldi's floor
constexpr float kScale = 32768.0f;           // Kaldi reads 16-bit integers

void check(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw std::invalid_argument("front end " + field + ": " + what);
}

int conv_out(int n, int stride) { return n < 3 ? 0 : (n - 3) / stride + 1; }

// y (rows x ldy) = max(0, y + bias), the first `n` columns.
void bias_relu(float* y, int rows, int ldy, int n, const FloatBuffer& bias) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < n; ++c) y[size_t(r) * ldy + c] = std::max(0.0f, y[size_t(r) * ldy + c] + bias[c]);
}

}  // namespace

void FrontendWeights::validate() const {
  const size_t bins = size_t(fft_size) / 2 + 1;
  check(fft_size >= 16 && fft_size <= 65536 && (fft_size & (fft_size - 1)) == 0, "fft",
        "the fft size must be a power of two from 16 to 65536");
  check(frame_length > 0 && frame_shift > 0 && frame_shift <= 65536 && fft_size >= frame_length, "frame",
        "needs 0 < length <= fft size, 0 < shift <= 65536");
  check(window.size() == size_t(frame_length), "window", "needs frame_length values");
  check(mel_bins >= 3 && mel.size() == size_t(mel_bins) * bins, "mel", "needs mel_bins (>= 3) x (fft_size / 2 + 1) values");
  check(mean.size() == size_t(mel_bins) && std.size() == size_t(mel_bins), "cmvn", "needs mel_bins means and stds");
  for (float s : std) check(s > 0, "cmvn", "std must be positive");
  check(channels > 0 && channels <= 4096 && (time_stride == 1 || time_stride == 2), "conv",
        "needs 0 < channels <= 4096 and a time stride of 1 or 2");
  check(conv1_w.size() == size_t(channels) * 9 && conv1_b.size() == size_t(channels), "conv1", "needs channels x 1 x 3 x 3 weights and channels biases");
  check(conv2_w.size() == size_t(channels) * channels * 9 && conv2_b.size() == size_t(channels), "conv2",
        "needs channels x channels x 3 x 3 weights and channels biases");
}

Frontend::Frontend(const FrontendWeights& w, const std::string& isa) : kern_(kernels(isa)) {
  w.validate();
  length_ = w.frame_length;
  shift_ = w.frame_shift;
  bins_ = w.fft_size / 2 + 1;
  mel_bins_ = w.mel_bins;
  channels_ = w.channels;
  stride_ = w.time_stride;
  preemphasis_ = w.preemphasis;
  f1_ = conv_out(mel_bins_, 2);
  f2_ = conv_out(f1_, 2);
  check(f2_ > 0, "mel", "too few mel bins for two convolutions");
  fft_ = w.fft_size;
  window_.assign(w.window.begin(), w.window.end());
  twiddles_.resize(size_t(fft_));
  for (int j = 0; j < fft_ / 2; ++j) {
    twiddles_[2 * j] = float(std::cos(2.0 * M_PI * j / fft_));
    twiddles_[2 * j + 1] = float(-std::sin(2.0 * M_PI * j / fft_));
  }
  int bits = 0;
  while ((1 << bits) < fft_) ++bits;
  bitrev_.resize(size_t(fft_));
  for (int i = 0; i < fft_; ++i) {
    int r = 0;
    for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
    bitrev_[i] = r;
  }
  mel_ = pack(kern_, w.mel.data(), mel_bins_, bins_, bins_);
  conv1_ = pack(kern_, w.conv1_w.data(), channels_, 9, 9);
  std::vector<float> w2(w.conv2_w.size());  // PyTorch's (out, c, i, j) as (out, i, j, c): channels contiguous
  for (int o = 0; o < channels_; ++o)
    for (int c = 0; c < channels_; ++c)
      for (int k = 0; k < 9; ++k) w2[(size_t(o) * 9 + k) * channels_ + c] = w.conv2_w[(size_t(o) * channels_ + c) * 9 + k];
  conv2_ = pack(kern_, w2.data(), channels_, channels_ * 9, channels_ * 9);
  mean_.assign(w.mean.begin(), w.mean.end());
  std_.assign(w.std.begin(), w.std.end());
  bias1_.assign(w.conv1_b.begin(), w.conv1_b.end());
  bias2_.assign(w.conv2_b.begin(), w.conv2_b.end());
}

int Frontend::feature_frames(int samples) const { return samples < length_ ? 0 : 1 + (samples - length_) / shift_; }

int Frontend::output_frames(int frames) const { return conv_out(conv_out(frames, 2), stride_); }

void Frontend::features(const float* samples, int n, float* out) {
  const int T = feature_frames(n);
  if (T == 0) throw std::invalid_argument("features: audio shorter than one frame (" + std::to_string(length_) + " samples)");
  FlushDenormals ftz;
  frames_.resize(size_t(T) * length_);
  kern_.prepare_frames(samples, T, shift_, length_, kScale, preemphasis_, window_.data(), frames_.data(), length_);
  power_.resize(size_t(T) * bins_);
  fft_scratch_.resize(size_t(2) * fft_ * kern_.width);
  kern_.power_spectra(frames_.data(), T, length_, length_, fft_, twiddles_.data(), bitrev_.data(), fft_scratch_.data(),
                      power_.data(), bins_);
  mels_.resize(size_t(T) * mel_.mp);
  kern_.matmul(power_.data(), T, bins_, mel_.data.data(), mel_.mp, bins_, mels_.data(), mel_.mp, false);
  for (int t = 0; t < T; ++t)
    for (int m = 0; m < mel_bins_; ++m)
      out[size_t(t) * mel_bins_ + m] =
          (std::log(std::max(mels_[size_t(t) * mel_.mp + m], kLogFloor)) - mean_[m]) / std_[m];
}

void Frontend::subsample(const float* feats, int frames, float* out) {
  const int t1 = conv_out(frames, 2), t2 = conv_out(t1, stride_), F = mel_bins_, C = channels_;
  if (t2 == 0) throw std::invalid_argument("subsample: " + std::to_string(frames) + " frames are too few");
  FlushDenormals ftz;
  const int rows1 = t1 * f1_, cp = conv1_.mp;
  cols_.resize(size_t(rows1) * 9);  // first convolution as a product: a row of 3 x 3 inputs per output
  for (int t = 0; t < t1; ++t)
    for (int f = 0; f < f1_; ++f)
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) cols_[(size_t(t) * f1_ + f) * 9 + i * 3 + j] = feats[size_t(2 * t + i) * F + 2 * f + j];
  y1_.resize(size_t(rows1) * cp);  // (t1, f1) positions x channels
  kern_.matmul(cols_.data(), rows1, 9, conv1_.data.data(), cp, 9, y1_.data(), cp, false);
  bias_relu(y1_.data(), rows1, cp, C, bias1_);
  const int k2 = C * 9, ld2 = conv2_.mp;
  constexpr int kFrames = 8;  // output frames per product: its inputs stay in cache, the product is not tiny
  cols_.resize(size_t(kFrames) * f2_ * k2);
  y2_.resize(size_t(t2) * f2_ * ld2);
  for (int t0 = 0; t0 < t2; t0 += kFrames) {  // second convolution
    const int nt = std::min(kFrames, t2 - t0);
    for (int t = t0; t < t0 + nt; ++t)
      for (int f = 0; f < f2_; ++f)
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j)  // inputs ordered (i, j, c), as the packed weights are
            std::copy_n(y1_.data() + (size_t(stride_ * t + i) * f1_ + 2 * f + j) * cp, C,
                        cols_.data() + (size_t(t - t0) * f2_ + f) * k2 + (i * 3 + j) * C);
    kern_.matmul(cols_.data(), nt * f2_, k2, conv2_.data.data(), ld2, k2, y2_.data() + size_t(t0) * f2_ * ld2, ld2,
                 false);
  }
  bias_relu(y2_.data(), t2 * f2_, ld2, C, bias2_);
  for (int t = 0; t < t2; ++t)  // (t, f, c) -> (t, c * f2 + f), as asr.py flattens channels and frequency
    for (int f = 0; f < f2_; ++f)
      for (int c = 0; c < C; ++c) out[size_t(t) * C * f2_ + c * f2_ + f] = y2_[(size_t(t) * f2_ + f) * conv2_.mp + c];
}

}  // namespace lrk
