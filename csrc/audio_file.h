// Audio a device is handed, untrusted: a 16 kHz mono 16-bit PCM .wav file, told by its RIFF/WAVE
// header (never by its size or name), or raw float32 samples when the caller asks for them. Every
// chunk is bounded by the bytes there; non-finite samples are refused. Errors name the file and field.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

namespace lrk {

// Samples in [-1, 1) of a wav file's bytes; throws std::runtime_error naming `name`.
std::vector<float> parse_wav(const std::string& bytes, const std::string& name);
// Little-endian float32 samples; throws std::runtime_error naming `name`.
std::vector<float> parse_raw_f32(const std::string& bytes, const std::string& name);

}  // namespace lrk
