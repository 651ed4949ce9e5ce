#include "asr.h"

#include <chrono>
#include <cmath>
#include <stdexcept>

namespace lrk {
namespace {

double ms_since(std::chrono::steady_clock::time_point& t) {
  const auto now = std::chrono::steady_clock::now();
  const double ms = std::chrono::duration<double, std::milli>(now - t).count();
  t = now;
  return ms;
}

void append_utf8(std::string& s, int cp) {
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace

Asr::Asr(const ModelWeights& w, const std::string& isa)
    : frontend_(w.frontend, isa), encoder_(w.encoder, isa), decoder_(w.decoder, w.limits, isa),
      lm_(w.has_lm ? std::make_unique<CharLm>(w.lm, isa) : nullptr), vocab_(w.vocab) {
  if (lm_ && lm_->vocab() != decoder_.vocab())
    throw std::invalid_argument("model: the language model predicts " + std::to_string(lm_->vocab()) +
                                " tokens, the decoder " + std::to_string(decoder_.vocab()));
  if (encoder_.input_size() != frontend_.output_size())
    throw std::invalid_argument("model: the encoder takes " + std::to_string(encoder_.input_size()) +
                                " inputs, the front end gives " + std::to_string(frontend_.output_size()));
  if (encoder_.output_size() != decoder_.enc_dim())
    throw std::invalid_argument("model: the decoder attends to " + std::to_string(decoder_.enc_dim()) +
                                " values, the encoder gives " + std::to_string(encoder_.output_size()));
}

Asr::Result Asr::transcribe(const float* samples, int n, const BeamOptions& options) {
  for (int k = 0; k < n; ++k)
    if (!std::isfinite(samples[k])) throw std::invalid_argument("transcribe: sample " + std::to_string(k) + " is not finite");
  Result r;
  r.frames = frontend_.feature_frames(n);
  r.encoder_frames = r.frames ? frontend_.output_frames(r.frames) : 0;
  if (r.encoder_frames == 0) throw std::invalid_argument("transcribe: audio too short for the model");
  auto t = std::chrono::steady_clock::now();
  feats_.resize(size_t(r.frames) * frontend_.mel_bins());
  frontend_.features(samples, n, feats_.data());
  r.ms[0] = ms_since(t);
  x_.resize(size_t(r.encoder_frames) * frontend_.output_size());
  frontend_.subsample(feats_.data(), r.frames, x_.data());
  r.ms[1] = ms_since(t);
  enc_.resize(size_t(r.encoder_frames) * encoder_.output_size());
  encoder_.forward(x_.data(), 1, r.encoder_frames, enc_.data());
  r.ms[2] = ms_since(t);
  r.tokens = options.beam <= 1 ? decoder_.greedy(enc_.data(), r.encoder_frames)
                               : decoder_.beam(enc_.data(), r.encoder_frames, options,
                                               options.lm_weight != 0 ? lm_.get() : nullptr);
  r.ms[3] = ms_since(t);
  for (int tok : r.tokens)
    if (tok >= 0 && tok < int(vocab_.size()) && vocab_[tok] > 0) append_utf8(r.text, vocab_[tok]);
  return r;
}

}  // namespace lrk
