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
                                     Scratch& tmp) const {
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
  const MatrixWeights& ih = w.lstm.cells[0].ih;
  if (ih.rank > 0 && ih.rank + vocab_ < enc_dim_) fold(w);
}

void AttentionDecoder::fold(const DecoderWeights& w) {
  const MatrixWeights& ih = w.lstm.cells[0].ih;
  const int D = enc_dim_, H = hidden_, E = embed_, in = E + D;
  rank_ = ih.rank;
  const std::vector<float> out = dense(w.out.w);  // vocab x (H + D)
  MatrixWeights c{rank_ + vocab_, D, 0, std::vector<float>(size_t(rank_ + vocab_) * D), {}, {}};
  for (int r = 0; r < rank_; ++r) std::copy_n(ih.v.data() + size_t(r) * in + E, D, c.w.data() + size_t(r) * D);
  for (int v = 0; v < vocab_; ++v)
    std::copy_n(out.data() + size_t(v) * (H + D) + H, D, c.w.data() + size_t(rank_ + v) * D);
  c.int8 = ih.int8 && w.out.w.int8;
  fold_ = Matrix::make(kern_, c);
  embz_.assign(size_t(vocab_) * rank_, 0.0f);
  for (int v = 0; v < vocab_; ++v)
    for (int r = 0; r < rank_; ++r)
      for (int e = 0; e < E; ++e)
        embz_[size_t(v) * rank_ + r] += embedding_[size_t(v) * E + e] * ih.v[size_t(r) * in + e];
  MatrixWeights oh{vocab_, H, 0, std::vector<float>(size_t(vocab_) * H), {}, {}};
  for (int v = 0; v < vocab_; ++v) std::copy_n(out.data() + size_t(v) * (H + D), H, oh.w.data() + size_t(v) * H);
  oh.int8 = w.out.w.int8;
  out_h_ = linear(LinearWeights{oh, w.out.bias});
}

// The values attended over, v (frames x m, row stride ldv), transposed and packed for the context product.
void AttentionDecoder::set_values(const float* v, int frames, int ldv, int m) {
  FloatBuffer t(size_t(m) * frames);
  for (int f = 0; f < frames; ++f)
    for (int i = 0; i < m; ++i) t[size_t(i) * frames + f] = v[size_t(f) * ldv + i];
  values_ = pack(kern_, t.data(), m, frames, frames);
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
  kern_.matmul(weights_.data(), 1, T, values_.data.data(), values_.mp, T, context_.data(), values_.mp, false);
}

std::vector<int> AttentionDecoder::greedy(const float* enc, int frames, std::vector<float>* logp) {
  if (frames < 1) throw std::invalid_argument("greedy: needs at least one encoder frame");
  FlushDenormals ftz;
  const int T = frames, D = enc_dim_, cap = max_steps(enc, T);
  keys_.resize(size_t(T) * key_.m.out_padded());
  key_.apply(kern_, enc, T, D, keys_.data(), tmp_);
  if (rank_) {
    const int ld = fold_.out_padded();
    vals_.resize(size_t(T) * ld);
    fold_.apply(kern_, enc, T, D, vals_.data(), ld, false, tmp_);
    set_values(vals_.data(), T, ld, rank_ + vocab_);
  } else {
    set_values(enc, T, D, D);
  }
  weights_.assign(size_t(T), 1.0f / float(T));
  context_.assign(size_t(values_.mp), 0.0f);
  x_.resize(size_t(embed_) + D);  // folded: the first rank_ values hold x . V^T
  q_.resize(size_t(hidden_) + D);  // [h, context]: the output projection's input
  logits_.resize(size_t(out_.m.out_padded()));
  lstm_.reset();
  if (logp) logp->clear();
  std::vector<int> tokens;
  int token = sos_;
  for (int u = 0; u < cap; ++u) {
    if (rank_) {
      const float* ez = embz_.data() + size_t(token) * rank_;
      for (int r = 0; r < rank_; ++r) x_[r] = ez[r] + context_[r];
      lstm_.step_factored(x_.data(), 1, q_.data());
    } else {
      std::copy_n(embedding_.data() + size_t(token) * embed_, embed_, x_.data());
      std::copy_n(context_.data(), D, x_.data() + embed_);
      lstm_.step(x_.data(), 1, q_.data());
    }
    attend(T);
    if (rank_) {
      out_h_.apply(kern_, q_.data(), 1, hidden_, logits_.data(), tmp_);
      for (int v = 0; v < vocab_; ++v) logits_[v] += context_[rank_ + v];
    } else {
      std::copy_n(context_.data(), D, q_.data() + hidden_);
      out_.apply(kern_, q_.data(), 1, hidden_ + D, logits_.data(), tmp_);
    }
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
