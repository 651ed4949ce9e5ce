// The whole model on packed weights, from 16 kHz samples to text: front end, encoder LSTM stack,
// greedy attention decoder; each stage timed. Not thread-safe: one per thread.
#pragma once
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

  Result transcribe(const float* samples, int n);
  const char* isa() const { return encoder_.isa(); }

 private:
  Frontend frontend_;
  LstmStack encoder_;
  AttentionDecoder decoder_;
  std::vector<int> vocab_;
  FloatBuffer feats_, x_, enc_;
};

}  // namespace lrk
