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
  const std::string what = linear_mismatch(l, rows, cols, bias);
  check(what.empty(), field, what);
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
  key_ = Linear::make(kern_, w.key);
  query_ = Linear::make(kern_, w.query);
  out_ = Linear::make(kern_, w.out);
  ctc_ = Linear::make(kern_, w.ctc);
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
  out_h_ = Linear::make(kern_, LinearWeights{oh, w.out.bias});
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

// Location-aware attention (asr.py's LocationAttention) of each of k hypotheses on its query (row i
// of h_): new rows of weights_ and context_.
void AttentionDecoder::attend(int k) {
  const int T = frames_, K = kernel_, half = K / 2, ap = key_.m.out_padded();
  qa_.resize(size_t(k) * ap);
  query_.apply(kern_, h_.data(), k, hidden_, qa_.data(), tmp_);
  const int tp = (T + kern_.width - 1) / kern_.width * kern_.width;  // the convolution's vectors overrun T
  padded_.assign(size_t(tp) + K - 1, 0.0f);                           // the convolution's zero padding
  locf_.resize(size_t(channels_) * tp);
  e_.resize(size_t(T));
  for (int i = 0; i < k; ++i) {
    float* w = weights_.data() + size_t(i) * T;
    std::copy_n(w, T, padded_.data() + half);
    kern_.location_conv(padded_.data(), T, conv_.data(), channels_, K, locf_.data(), tp);
    kern_.attention_energies(keys_.data(), qa_.data() + size_t(i) * ap, locf_.data(), tp, loc_t_.data(), channels_,
                             energy_v_.data(), ap, T, e_.data());
    const float top = *std::max_element(e_.begin(), e_.end()) + energy_bias_;
    double sum = 0;
    for (int t = 0; t < T; ++t) sum += w[t] = std::exp(e_[t] + energy_bias_ - top);
    for (int t = 0; t < T; ++t) w[t] = float(w[t] / sum);
  }
  kern_.matmul(weights_.data(), k, T, values_.data.data(), values_.mp, T, context_.data(), values_.mp, false);
}

int AttentionDecoder::start(const float* enc, int frames) {
  if (frames < 1) throw std::invalid_argument("decode: needs at least one encoder frame");
  const int T = frames_ = frames, D = enc_dim_, cap = max_steps(enc, T);
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
  lstm_.reset();
  return cap;
}

void AttentionDecoder::step(const int* tokens, int k) {
  const int D = enc_dim_, H = hidden_, mp = values_.mp;
  h_.resize(size_t(k) * H);
  if (rank_) {  // folded: the first rank_ values of a context hold its product with V's context columns
    x_.resize(size_t(k) * rank_);
    for (int i = 0; i < k; ++i) {
      const float* ez = embz_.data() + size_t(tokens[i]) * rank_;
      for (int r = 0; r < rank_; ++r) x_[size_t(i) * rank_ + r] = ez[r] + context_[size_t(i) * mp + r];
    }
    lstm_.step_factored(x_.data(), k, h_.data());
  } else {
    x_.resize(size_t(k) * (embed_ + D));
    for (int i = 0; i < k; ++i) {
      float* x = x_.data() + size_t(i) * (embed_ + D);
      std::copy_n(embedding_.data() + size_t(tokens[i]) * embed_, embed_, x);
      std::copy_n(context_.data() + size_t(i) * mp, D, x + embed_);
    }
    lstm_.step(x_.data(), k, h_.data());
  }
  attend(k);
  const int ld = logits_stride();
  logits_.resize(size_t(k) * ld);
  if (rank_) {
    out_h_.apply(kern_, h_.data(), k, H, logits_.data(), tmp_);
    for (int i = 0; i < k; ++i)
      for (int v = 0; v < vocab_; ++v) logits_[size_t(i) * ld + v] += context_[size_t(i) * mp + rank_ + v];
  } else {
    qd_.resize(size_t(k) * (H + D));  // [h, context]: the output projection's input
    for (int i = 0; i < k; ++i) {
      std::copy_n(h_.data() + size_t(i) * H, H, qd_.data() + size_t(i) * (H + D));
      std::copy_n(context_.data() + size_t(i) * mp, D, qd_.data() + size_t(i) * (H + D) + H);
    }
    out_.apply(kern_, qd_.data(), k, H + D, logits_.data(), tmp_);
  }
}

void AttentionDecoder::select(const std::vector<int>& rows) {
  const int n = int(rows.size()), T = frames_, mp = values_.mp;
  lstm_.select(rows.data(), n);
  FloatBuffer w(size_t(n) * T), c(size_t(n) * mp);
  for (int i = 0; i < n; ++i) {
    std::copy_n(weights_.data() + size_t(rows[i]) * T, T, w.data() + size_t(i) * T);
    std::copy_n(context_.data() + size_t(rows[i]) * mp, mp, c.data() + size_t(i) * mp);
  }
  weights_.swap(w);
  context_.swap(c);
}

std::vector<int> AttentionDecoder::greedy(const float* enc, int frames, std::vector<float>* logp) {
  FlushDenormals ftz;
  const int cap = start(enc, frames);
  if (logp) logp->clear();
  std::vector<int> tokens;
  int token = sos_;
  for (int u = 0; u < cap; ++u) {
    step(&token, 1);
    token = argmax(logits_.data(), vocab_);
    if (logp) {
      logp->resize(logp->size() + vocab_);
      log_softmax(logits_.data(), vocab_, logp->data() + logp->size() - vocab_);
    }
    if (token == eos_) break;
    tokens.push_back(token);
  }
  return tokens;
}

std::vector<int> AttentionDecoder::beam(const float* enc, int frames, const BeamOptions& o, CharLm* lm) {
  if (o.beam < 1) throw std::invalid_argument("beam: the beam must be at least 1");
  if (lm && lm->vocab() != vocab_)
    throw std::invalid_argument("beam: the language model's vocabulary (" + std::to_string(lm->vocab()) +
                                ") is not the decoder's (" + std::to_string(vocab_) + ")");
  FlushDenormals ftz;
  const int cap = start(enc, frames), V = vocab_, ld = logits_stride();
  if (lm) lm->reset();
  const auto norm = [&](double score, size_t chars) {
    return score / std::pow(double(std::max<size_t>(1, chars + 1)), o.length_penalty);
  };
  std::vector<std::vector<int>> seqs(1), next;
  std::vector<double> scores(1, 0.0), next_scores, total;
  std::vector<std::pair<std::vector<int>, double>> finished;
  std::vector<int> last{sos_}, rows, order;
  std::vector<float> lp, lmp;
  for (int u = 0; u < cap; ++u) {
    const int k = int(seqs.size()), kv = k * V;
    step(last.data(), k);
    lp.resize(size_t(kv));
    for (int i = 0; i < k; ++i) log_softmax(logits_.data() + size_t(i) * ld, V, lp.data() + size_t(i) * V);
    if (lm) {
      lmp.resize(size_t(kv));
      lm->step(last.data(), k, lmp.data());
    }
    total.resize(size_t(kv));
    for (int j = 0; j < kv; ++j) {
      double t = scores[j / V] + double(lp[j]);
      if (lm) t += o.lm_weight * double(lmp[j]);
      total[j] = t + o.length_bonus;
    }
    const int n = std::min(2 * o.beam, kv);
    order.resize(size_t(kv));
    for (int j = 0; j < kv; ++j) order[j] = j;
    std::partial_sort(order.begin(), order.begin() + n, order.end(),
                      [&](int a, int b) { return total[a] > total[b] || (total[a] == total[b] && a < b); });
    rows.clear();
    next.clear();
    next_scores.clear();
    for (int j = 0; j < n; ++j) {
      const int i = order[j] / V, tok = order[j] % V;
      if (tok == eos_) {
        finished.emplace_back(seqs[i], total[order[j]]);
      } else if (int(rows.size()) < o.beam) {
        rows.push_back(i);
        next.push_back(seqs[i]);
        next.back().push_back(tok);
        next_scores.push_back(total[order[j]]);
      }
    }
    if (rows.empty()) break;
    select(rows);
    if (lm) lm->select(rows.data(), int(rows.size()));
    seqs.swap(next);
    scores.swap(next_scores);
    last.resize(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) last[i] = seqs[i].back();
    if (int(finished.size()) >= o.beam) {  // stop once no live hypothesis can overtake, bonus and all
      const double hope = std::max(0.0, o.length_bonus) * double(cap - u - 1);
      double done = -INFINITY, live = -INFINITY;
      for (const auto& f : finished) done = std::max(done, norm(f.second, f.first.size()));
      for (size_t i = 0; i < seqs.size(); ++i) live = std::max(live, norm(scores[i] + hope, seqs[i].size()));
      if (done > live) break;
    }
  }
  if (finished.empty())
    for (size_t i = 0; i < seqs.size(); ++i) finished.emplace_back(seqs[i], scores[i]);
  size_t best = 0;
  for (size_t i = 1; i < finished.size(); ++i)
    if (norm(finished[i].second, finished[i].first.size()) > norm(finished[best].second, finished[best].first.size()))
      best = i;
  return finished[best].first;
}

}  // namespace lrk
