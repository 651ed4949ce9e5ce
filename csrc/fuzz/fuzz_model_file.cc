// libFuzzer target: a whole model file, read, packed and run on a short utterance (greedy, and by
// beam search with its LM if it has one). Any input must
// end in a model or a FormatError/invalid_argument, never a crash, a leak, UB or a huge allocation.
#include <cstdint>
#include <string>
#include <vector>

#include "asr.h"
#include "model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const lrk::ModelFile file(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    lrk::Asr asr(lrk::read_model(file), "auto");
    static const std::vector<float> audio(4800, 0.01f);  // 0.3 s
    asr.transcribe(audio.data(), int(audio.size()));
    if (asr.has_lm()) {  // beam search fused with the file's LM
      lrk::BeamOptions beam;
      beam.beam = 2;
      beam.lm_weight = 0.5;
      asr.transcribe(audio.data(), int(audio.size()), beam);
    }
  } catch (const std::exception&) {
  }
  return 0;
}
