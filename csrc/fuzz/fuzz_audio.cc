// libFuzzer target: the audio readers of lowrank_bench (a wav file by its header; raw float32).
#include <cstdint>
#include <string>

#include "audio_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    lrk::parse_wav(bytes, "fuzz");
  } catch (const std::exception&) {
  }
  try {
    lrk::parse_raw_f32(bytes, "fuzz");
  } catch (const std::exception&) {
  }
  return 0;
}
