// The character LSTM language model of pipeline/model/lm.py on packed weights: an embedding, an
// LSTM stack (dense or factored, fp32 or int8) and an output projection, stepped one token per
// live hypothesis, for shallow fusion in beam search (decoder.h). Not thread-safe: one per thread.
#pragma once
#include <string>
#include <vector>

#include "lstm.h"
#include "matrix.h"

namespace lrk {

struct LmWeights {
  std::vector<float> embedding;  // vocab x embed
  int embed = 0;
  StackWeights lstm;             // one direction; its input: the embedding
  LinearWeights out;             // vocab x hidden, with bias
  // Throws std::invalid_argument naming the field whose shape disagrees with the others.
  void validate() const;
};

class CharLm {
 public:
  explicit CharLm(const LmWeights& weights, const std::string& isa = "auto");

  // Back to the zero state (before a sentence's first token, <sos>).
  void reset() { lstm_.reset(); }
  // Feeds row i its token tokens[i] (k rows) -> logp (k x vocab()): each row's next-token log-probabilities.
  void step(const int* tokens, int k, float* logp);
  // Keeps rows[0..n) of the state as the new rows (see LstmStack::select).
  void select(const int* rows, int n) { lstm_.select(rows, n); }

  int vocab() const { return vocab_; }
  const LstmStack& lstm() const { return lstm_; }
  const char* isa() const { return lstm_.isa(); }

 private:
  const Kernels& kern_;
  int vocab_, embed_;
  std::vector<float> embedding_;
  LstmStack lstm_;
  Linear out_;
  FloatBuffer x_, h_, logits_;
  Scratch tmp_;
};

}  // namespace lrk
