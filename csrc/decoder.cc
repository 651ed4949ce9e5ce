#include "decoder.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace lrk {
namespace {

void check(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw std::invalid_argument("decoder " + field + ": " + what);
}

void check_linear(const LinearWeights& l, int rows, int cols, bool bias, const std::string& field) {
  const MatrixWeights& m = l.w;
  check(m.rows == rows && m.cols == cols, field,
        "shape " + std::to_string(m.rows) + "x" + std::to_string(m.cols) + ", expected " + std::to_string(rows) +
            "x" + std::to_string(cols));
  check(m.rank >= 0 && m.rank <= std::min(rows, cols), field, "rank " + std::to_string(m.rank) + " out of range");
  check(m.rank ? m.u.size() == size_t(rows) * m.rank && m.v.size() == size_t(m.rank) * cols
               : m.w.size() == size_t(rows) * cols, field, "number of values does not match its shape and rank");
  check(l.bias.size() == (bias ? size_t(rows) : 0), field, bias ? "needs a bias of its rows" : "takes no bias");
}

std::vector<float> dense(const MatrixWeights& m) {
  if (m.rank == 0) return m.w;
  std::vector<float> w(size_t(m.rows) * m.cols, 0.0f);
  for (int i = 0; i < m.rows; ++i)
    for (int r = 0; r < m.rank; ++r)
      for (int j = 0; j < m.cols; ++j) w[size_t(i) * m.cols + j] += m.u[size_t(i) * m.rank + r] * m.v[size_t(r) * m.cols + j];
  return w;
}

int argmax(const float* x, int n) {  // the first of equal maxima, as torch.argmax
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace

void DecoderWeights::validate() const {
  lstm.validate();
  check(lstm.directions == 1, "lstm", "must be unidirectional");
  const int hidden = lstm.cells[0].hidden, enc_dim = lstm.cells[0].input - embed;
  const int vocab = out.w.rows, att = key.w.rows, channels = loc.w.cols;
  check(embed > 0 && enc_dim > 0, "embed", "the LSTM input must be embed + enc_dim, both positive");
  check(vocab > 0 && embedding.size() == size_t(vocab) * embed, "embedding", "needs vocab x embed values");
  check_linear(key, att, enc_dim, true, "key");
  check_linear(query, att, hidden, false, "query");
  check_linear(loc, att, channels, false, "loc");
  check_linear(energy, 1, att, true, "energy");
  check_linear(out, vocab, hidden + enc_dim, true, "out");
  check_linear(ctc, vocab, enc_dim, true, "ctc");
  check(channels > 0 && !loc_conv.empty() && loc_conv.size() % channels == 0 && (loc_conv.size() / channels) % 2 == 1,
        "loc_conv", "needs channels x kernel values, the kernel odd");
  for (int t : {sos, eos, blank}) check(t >= 0 && t < vocab, "tokens", "sos, eos and blank must be in the vocabulary");
}

AttentionDecoder::Linear AttentionDecoder::linear(const LinearWeights& w) const {
  Linear l{Matrix::make(kern_, w.w), {}};
  l.bias.assign(size_t(l.m.out_padded()), 0.0f);
  std::copy(w.bias.begin(), w.bias.end(), l.bias.begin());
  return l;
}

void AttentionDecoder::Linear::apply(const Kernels& kern, const float* x, int rows, int ldx, float* y,
                                     FloatBuffer& tmp) const {
  const int ldy = m.out_padded();
  for (int r = 0; r < rows; ++r) std::copy(bias.begin(), bias.end(), y + size_t(r) * ldy);
  m.apply(kern, x, rows, ldx, y, ldy, true, tmp);
}

AttentionDecoder::AttentionDecoder(const DecoderWeights& w, const DecodeLimits& limits, const std::string& isa)
    : kern_(kernels(isa)), limits_(limits), lstm_((w.validate(), w.lstm), isa) {
  vocab_ = w.out.w.rows;
  embed_ = w.embed;
  hidden_ = lstm_.hidden_size();
  enc_dim_ = lstm_.input_size() - embed_;
  channels_ = w.loc.w.cols;
  kernel_ = int(w.loc_conv.size()) / channels_;
  sos_ = w.sos;
  eos_ = w.eos;
  blank_ = w.blank;
  embedding_ = w.embedding;
  key_ = linear(w.key);
  query_ = linear(w.query);
  out_ = linear(w.out);
  ctc_ = linear(w.ctc);
  const int att = w.key.w.rows, ap = key_.m.out_padded();
  const std::vector<float> loc = dense(w.loc.w), v = dense(w.energy.w);
  loc_t_.assign(size_t(channels_) * ap, 0.0f);
  for (int a = 0; a < att; ++a)
    for (int c = 0; c < channels_; ++c) loc_t_[size_t(c) * ap + a] = loc[size_t(a) * channels_ + c];
  energy_v_.assign(size_t(ap), 0.0f);
  std::copy(v.begin(), v.end(), energy_v_.begin());
  energy_bias_ = w.energy.bias[0];
  conv_.assign(w.loc_conv.begin(), w.loc_conv.end());
}

int AttentionDecoder::max_steps(const float* enc, int frames) {
  int cap = std::max(limits_.min_len, int(float(frames) * limits_.max_len_ratio));
  if (limits_.ctc_len_ratio <= 0 || frames == 0) return cap;
  const int ld = ctc_.m.out_padded();
  logits_.resize(size_t(frames) * ld);
  ctc_.apply(kern_, enc, frames, enc_dim_, logits_.data(), tmp_);
  int n = 0, prev = -1;
  for (int t = 0; t < frames; ++t) {  // the best path: repeats merged, blanks dropped
    const int k = argmax(logits_.data() + size_t(t) * ld, vocab_);
    n += k != blank_ && k != prev;
    prev = k;
  }
  return std::min(cap, int(float(n) * limits_.ctc_len_ratio) + limits_.ctc_len_margin);
}

// Location-aware attention (asr.py's LocationAttention) on the query in q_: new weights_ and context_.
void AttentionDecoder::attend(int frames) {
  const int T = frames, K = kernel_, half = K / 2, ap = key_.m.out_padded();
  qa_.resize(size_t(ap));
  query_.apply(kern_, q_.data(), 1, hidden_, qa_.data(), tmp_);
  const int tp = (T + kern_.width - 1) / kern_.width * kern_.width;  // the convolution's vectors overrun T
  padded_.assign(size_t(tp) + K - 1, 0.0f);                           // the convolution's zero padding
  std::copy_n(weights_.data(), T, padded_.data() + half);
  locf_.resize(size_t(channels_) * tp);
  kern_.location_conv(padded_.data(), T, conv_.data(), channels_, K, locf_.data(), tp);
  e_.resize(size_t(T));
  kern_.attention_energies(keys_.data(), qa_.data(), locf_.data(), tp, loc_t_.data(), channels_, energy_v_.data(), ap,
                           T, e_.data());
  const float top = *std::max_element(e_.begin(), e_.end()) + energy_bias_;
  double sum = 0;
  for (int t = 0; t < T; ++t) sum += weights_[t] = std::exp(e_[t] + energy_bias_ - top);
  for (int t = 0; t < T; ++t) weights_[t] = float(weights_[t] / sum);
  kern_.matmul(weights_.data(), 1, T, enc_t_.data.data(), enc_t_.mp, T, context_.data(), enc_t_.mp, false);
}

std::vector<int> AttentionDecoder::greedy(const float* enc, int frames, std::vector<float>* logp) {
  if (frames < 1) throw std::invalid_argument("greedy: needs at least one encoder frame");
  FlushDenormals ftz;
  const int T = frames, D = enc_dim_, cap = max_steps(enc, T);
  keys_.resize(size_t(T) * key_.m.out_padded());
  key_.apply(kern_, enc, T, D, keys_.data(), tmp_);
  FloatBuffer enc_t(size_t(D) * T);
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < D; ++d) enc_t[size_t(d) * T + t] = enc[size_t(t) * D + d];
  enc_t_ = pack(kern_, enc_t.data(), D, T, T);
  weights_.assign(size_t(T), 1.0f / float(T));
  context_.assign(size_t(enc_t_.mp), 0.0f);
  x_.resize(size_t(embed_) + D);
  q_.resize(size_t(hidden_) + D);  // [h, context]: the output projection's input
  logits_.resize(size_t(out_.m.out_padded()));
  lstm_.reset();
  if (logp) logp->clear();
  std::vector<int> tokens;
  int token = sos_;
  for (int u = 0; u < cap; ++u) {
    std::copy_n(embedding_.data() + size_t(token) * embed_, embed_, x_.data());
    std::copy_n(context_.data(), D, x_.data() + embed_);
    lstm_.step(x_.data(), 1, q_.data());
    attend(T);
    std::copy_n(context_.data(), D, q_.data() + hidden_);
    out_.apply(kern_, q_.data(), 1, hidden_ + D, logits_.data(), tmp_);
    token = argmax(logits_.data(), vocab_);
    if (logp) {
      const float top = logits_[token];
      double sum = 0;
      for (int v = 0; v < vocab_; ++v) sum += std::exp(double(logits_[v] - top));
      for (int v = 0; v < vocab_; ++v) logp->push_back(float(logits_[v] - top - std::log(sum)));
    }
    if (token == eos_) break;
    tokens.push_back(token);
  }
  return tokens;
}

}  // namespace lrk
