// The whole model on packed weights, from 16 kHz samples to text: front end, encoder LSTM stack,
// attention decoder (greedy, or beam search fused with the model's character LM if it has one);
// each stage timed. Not thread-safe: one per thread.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "decoder.h"
#include "frontend.h"
#include "lstm.h"
#include "model_file.h"

namespace lrk {

class Asr {
 public:
  explicit Asr(const ModelWeights& weights, const std::string& isa = "auto");

  struct Result {
    std::string text;                  // UTF-8
    std::vector<int> tokens;
    double ms[4] = {};                 // features, subsampling, encoder LSTM stack, decoder
    int frames = 0, encoder_frames = 0;
  };
  static constexpr const char* kStages[4] = {"features", "subsampling", "encoder_lstm", "decoder"};

  // options.beam 1: greedy; above: beam search, fused with the LM (if any) at options.lm_weight.
  Result transcribe(const float* samples, int n, const BeamOptions& options = {1});
  const char* isa() const { return encoder_.isa(); }
  bool has_lm() const { return lm_ != nullptr; }

 private:
  Frontend frontend_;
  LstmStack encoder_;
  AttentionDecoder decoder_;
  std::unique_ptr<CharLm> lm_;
  std::vector<int> vocab_;
  FloatBuffer feats_, x_, enc_;
};

}  // namespace lrk
