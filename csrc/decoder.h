// Greedy and beam-search decoding with the attention decoder of pipeline/model/asr.py (an LSTM over
// the previous character and context, location-aware attention, an output projection) on packed
// weights: the whole output loop in C++, one utterance at a time, every projection dense or
// factored. The beam's live hypotheses step together as one batch; a character LM (char_lm.h)
// fuses into it exactly as pipeline/model/beam.py describes. The output length is capped as
// pipeline/model/decode.py caps it, from the CTC head's best path.
// Not thread-safe: one decoder per thread (it owns its scratch buffers).
#pragma once
#include <string>
#include <vector>

#include "char_lm.h"
#include "lstm.h"
#include "matrix.h"

namespace lrk {

struct DecoderWeights {
  std::vector<float> embedding;  // vocab x embed
  int embed = 0;
  StackWeights lstm;             // one direction; its input: the embedding, then the context
  LinearWeights key, query;      // att x enc_dim (bias), att x hidden (none)
  std::vector<float> loc_conv;   // channels x kernel (odd): convolution over the previous weights
  LinearWeights loc, energy;     // att x channels (none), 1 x att (bias)
  LinearWeights out, ctc;        // vocab x (hidden + enc_dim), vocab x enc_dim (both with bias)
  int sos = 0, eos = 0, blank = 0;
  // Throws std::invalid_argument naming the field whose shape disagrees with the others.
  void validate() const;
};

// decode.py's DecodeConfig caps: max(min_len, frames x max_len_ratio), and at most
// ctc_len_ratio x the CTC best path's length + ctc_len_margin (ctc_len_ratio 0: no CTC cap).
struct DecodeLimits {
  float max_len_ratio = 1.5f, ctc_len_ratio = 1.5f;
  int ctc_len_margin = 5, min_len = 8;
};

// pipeline/model/beam.py's BeamConfig: a hypothesis extended by v scores log p_asr(v) +
// lm_weight log p_lm(v) + length_bonus; compared by score / (characters + 1) ^ length_penalty.
struct BeamOptions {
  int beam = 8;
  double lm_weight = 0, length_bonus = 0, length_penalty = 1;
};

class AttentionDecoder {
 public:
  AttentionDecoder(const DecoderWeights& weights, const DecodeLimits& limits = {}, const std::string& isa = "auto");

  // enc (frames x enc_dim) -> the greedy output tokens, EOS excluded; logp, if given, receives each
  // step's log-probabilities (steps x vocab).
  std::vector<int> greedy(const float* enc, int frames, std::vector<float>* logp = nullptr);
  // enc -> the best hypothesis of a beam search (EOS excluded), fused with `lm` if given.
  std::vector<int> beam(const float* enc, int frames, const BeamOptions& options, CharLm* lm = nullptr);
  // The output-length cap of an utterance.
  int max_steps(const float* enc, int frames);

  int enc_dim() const { return enc_dim_; }
  int vocab() const { return vocab_; }
  // Floats per encoder frame the context product reads at each step: enc_dim, or rank + vocab when folded.
  int values_per_frame() const { return rank_ ? rank_ + vocab_ : enc_dim_; }
  const char* isa() const { return kern_.isa; }

 private:
  // Per utterance: keys, values and the first state; returns the output-length cap.
  int start(const float* enc, int frames);
  // Feeds row i of the live hypotheses tokens[i] (k rows): logits_ (k rows, logits_stride() apart).
  void step(const int* tokens, int k);
  // Keeps the hypotheses rows (see LstmStack::select), with their attention weights and context.
  void select(const std::vector<int>& rows);
  void fold(const DecoderWeights& w);
  void set_values(const float* v, int frames, int ldv, int m);
  void attend(int k);
  int logits_stride() const { return rank_ ? out_h_.m.out_padded() : out_.m.out_padded(); }

  const Kernels& kern_;
  DecodeLimits limits_;
  int vocab_, embed_, enc_dim_, hidden_, channels_, kernel_, sos_, eos_, blank_;
  std::vector<float> embedding_;
  LstmStack lstm_;
  Linear key_, query_, out_, ctc_;
  // Dense, padded to the keys' width: the location projection's columns (channels x ap) and the
  // energy vector; the convolution (channels x kernel).
  FloatBuffer loc_t_, energy_v_, conv_;
  float energy_bias_ = 0;
  // The context enters two products: the LSTM's input matrix and the output projection. When the
  // former is factored (W = U V, rank r) and r + vocab < enc_dim, both are folded into the values
  // attended over: per utterance vals = enc [V's context columns; out's context columns]^T (frames
  // x (r + vocab)); per step their weighted sum stands for both products of the context, which is
  // never formed. A step then streams (r + vocab) x frames floats instead of enc_dim x frames and
  // both matrices' context columns. rank_ 0: not folded.
  int rank_ = 0;
  Matrix fold_;       // (r + vocab) x enc_dim
  FloatBuffer embz_;  // vocab x r: each token's embedding times V's embedding columns
  Linear out_h_;      // the output projection's hidden-state columns, with its bias
  // Per utterance: keys (frames x ap), the values (enc or vals)^T packed for the context product;
  // per step and live hypothesis (a row each): the rest. context_ is the weighted sum of the values.
  int frames_ = 0;
  FloatBuffer keys_, vals_, x_, h_, qd_, qa_, padded_, locf_, e_, weights_, context_, logits_;
  Scratch tmp_;
  Packed values_;
};

}  // namespace lrk
