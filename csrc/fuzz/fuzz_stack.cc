// libFuzzer target: the `encoder` LSTM stack of a model file (what lowrank_bench --weights loads),
// packed and run over a few frames in both modes.
#include <cstdint>
#include <string>
#include <vector>

#include "lstm.h"
#include "model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const lrk::ModelFile file(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    lrk::LstmStack stack(file.stack("encoder"), "auto");
    const int frames = 3;
    std::vector<float> x(size_t(frames) * stack.input_size(), 0.5f), y(size_t(frames) * stack.output_size());
    stack.forward(x.data(), 1, frames, y.data());
    if (stack.directions() == 1) stack.step(x.data(), 1, y.data());
  } catch (const std::exception&) {
  }
  return 0;
}
