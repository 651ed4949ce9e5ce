// A whole file's bytes, read once into one buffer of the file's size: what every reader of an
// untrusted file (model_file.h, audio_file.h, lowrank_bench --input) parses from.
#pragma once
#include <string>

namespace lrk {

// Throws std::runtime_error naming the path when it cannot be opened or read.
std::string read_bytes(const std::string& path);

}  // namespace lrk
