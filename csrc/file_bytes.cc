#include "file_bytes.h"

#include <fstream>
#include <stdexcept>

namespace lrk {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  const std::streamoff size = in ? std::streamoff(in.tellg()) : -1;
  if (size < 0) throw std::runtime_error(path + ": cannot open");
  std::string bytes(size_t(size), '\0');
  in.seekg(0);
  if (!in.read(&bytes[0], size)) throw std::runtime_error(path + ": cannot read");
  return bytes;
}

}  // namespace lrk
