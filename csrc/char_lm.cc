#include "char_lm.h"

#include <algorithm>
#include <stdexcept>

namespace lrk {
namespace {

void check(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw std::invalid_argument("lm " + field + ": " + what);
}

}  // namespace

void LmWeights::validate() const {
  lstm.validate();
  check(lstm.directions == 1, "lstm", "must be unidirectional");
  check(lstm.cells[0].proj == 0, "lstm", "takes no projection");
  check(embed > 0 && lstm.cells[0].input == embed, "embedding", "its width must be the LSTM's input size");
  const int vocab = out.w.rows;
  check(vocab > 0 && embedding.size() == size_t(vocab) * embed, "embedding", "needs vocab x embed values");
  const std::string what = linear_mismatch(out, vocab, lstm.cells.back().hidden, true);
  check(what.empty(), "out", what);
}

CharLm::CharLm(const LmWeights& w, const std::string& isa)
    : kern_(kernels(isa)), vocab_(w.out.w.rows), embed_(w.embed), embedding_(w.embedding),
      lstm_((w.validate(), w.lstm), isa), out_(Linear::make(kern_, w.out)) {}

void CharLm::step(const int* tokens, int k, float* logp) {
  x_.resize(size_t(k) * embed_);
  for (int i = 0; i < k; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_) throw std::invalid_argument("lm step: token out of the vocabulary");
    std::copy_n(embedding_.data() + size_t(tokens[i]) * embed_, embed_, x_.data() + size_t(i) * embed_);
  }
  const int hidden = lstm_.state_size(), ld = out_.m.out_padded();
  h_.resize(size_t(k) * hidden);
  lstm_.step(x_.data(), k, h_.data());
  logits_.resize(size_t(k) * ld);
  out_.apply(kern_, h_.data(), k, hidden, logits_.data(), tmp_);
  for (int i = 0; i < k; ++i) log_softmax(logits_.data() + size_t(i) * ld, vocab_, logp + size_t(i) * vocab_);
}

}  // namespace lrk
