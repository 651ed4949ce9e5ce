#include "audio_file.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace lrk {
namespace {

uint32_t le32(const unsigned char* p) { return p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24; }
int le16(const unsigned char* p) { return p[0] | p[1] << 8; }

}  // namespace

std::vector<float> parse_wav(const std::string& bytes, const std::string& name) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (n < 12 || std::memcmp(b, "RIFF", 4) != 0 || std::memcmp(b + 8, "WAVE", 4) != 0)
    throw std::runtime_error(name + ": not a wav file (no RIFF/WAVE header)");
  bool fmt_ok = false;
  for (size_t p = 12; p + 8 <= n;) {
    const uint32_t size = le32(b + p + 4);
    const size_t body = p + 8;
    if (size > n - body) throw std::runtime_error(name + ": truncated wav chunk");
    if (std::memcmp(b + p, "fmt ", 4) == 0) {
      if (size < 16) throw std::runtime_error(name + ": field fmt: " + std::to_string(size) + " bytes, needs 16");
      const int format = le16(b + body), channels = le16(b + body + 2), bits = le16(b + body + 14);
      if (format != 1 || channels != 1 || le32(b + body + 4) != 16000 || bits != 16)
        throw std::runtime_error(name + ": field fmt: needs PCM, 1 channel, 16000 Hz, 16 bits");
      fmt_ok = true;
    } else if (std::memcmp(b + p, "data", 4) == 0) {
      if (!fmt_ok) throw std::runtime_error(name + ": data chunk before the fmt chunk");
      std::vector<float> x(size / 2);
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(int16_t(le16(b + body + 2 * i))) / 32768.0f;
      return x;
    }
    p = body + size + (size & 1);
  }
  throw std::runtime_error(name + ": no data chunk");
}

std::vector<float> parse_raw_f32(const std::string& bytes, const std::string& name) {
  if (bytes.empty() || bytes.size() % 4) throw std::runtime_error(name + ": raw float32 samples need a multiple of 4 bytes");
  std::vector<float> x(bytes.size() / 4);
  std::memcpy(x.data(), bytes.data(), bytes.size());
  for (size_t k = 0; k < x.size(); ++k)
    if (!std::isfinite(x[k])) throw std::runtime_error(name + ": sample " + std::to_string(k) + " is not finite");
  return x;
}

}  // namespace lrk
