// The model's front end on packed weights: Kaldi-compatible log-mel filterbanks (as
// torchaudio.compliance.kaldi.fbank computes them with pipeline/data/features.py's settings: no
// dither, DC offset removed, pre-emphasis, the window, power spectrum by FFT, mel banks, log), global
// CMVN, and the two-convolution subsampling of pipeline/model/asr.py (ConvSubsampling). Not
// thread-safe: one front end per thread.
#pragma once
#include <string>
#include <vector>

#include "lstm_kernels.h"

namespace lrk {

struct FrontendWeights {
  int frame_length = 400, frame_shift = 160, fft_size = 512;  // samples
  float preemphasis = 0.97f;
  std::vector<float> window;     // frame_length
  int mel_bins = 0;
  std::vector<float> mel;        // mel_bins x (fft_size / 2 + 1)
  std::vector<float> mean, std;  // mel_bins: global CMVN
  int channels = 0, time_stride = 2;    // of the second convolution (1 or 2); all others are 2
  std::vector<float> conv1_w, conv1_b;  // channels x 1 x 3 x 3, channels
  std::vector<float> conv2_w, conv2_b;  // channels x channels x 3 x 3, channels
  // Throws std::invalid_argument naming the field whose size disagrees with the others.
  void validate() const;
};

class Frontend {
 public:
  explicit Frontend(const FrontendWeights& weights, const std::string& isa = "auto");

  int feature_frames(int samples) const;  // 0 when shorter than one frame
  int output_frames(int frames) const;    // after the subsampling; 0 when too short for it
  int mel_bins() const { return mel_bins_; }
  int output_size() const { return channels_ * f2_; }

  // samples (mono, 16 kHz, in [-1, 1]) -> CMVN-normalised log-mel features (frames x mel_bins).
  void features(const float* samples, int n, float* out);
  // features (frames x mel_bins) -> the encoder LSTM stack's input (output_frames x output_size).
  void subsample(const float* feats, int frames, float* out);

 private:
  const Kernels& kern_;
  int length_, shift_, bins_, mel_bins_, channels_, stride_, f1_, f2_;
  float preemphasis_;
  int fft_;
  Packed mel_, conv1_, conv2_;  // mel banks; convolutions
  FloatBuffer window_, twiddles_, mean_, std_, bias1_, bias2_;
  std::vector<int> bitrev_;
  FloatBuffer frames_, fft_scratch_, power_, mels_, cols_, y1_, y2_;  // scratch
};

}  // namespace lrk
