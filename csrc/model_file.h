// The one file format the native runtime loads (docs/formats.md): named arrays that hold a whole
// model (front end, encoder LSTM stack, attention decoder, vocabulary, optionally a character LM)
// or any part of one, such as an LSTM stack alone for lowrank_bench --weights or an LM alone. export/native.py writes it.
//
// The layout and every entry's name, type and shape: docs/formats.md ("Native model file"), the one
// description of the format; a factored matrix NAME is two entries NAME.U and NAME.V.
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "char_lm.h"
#include "decoder.h"
#include "frontend.h"
#include "lstm_weights.h"

namespace lrk {

// Version 2 ends with the CRC-32 of every byte before it; version 3 adds int8 entries (a matrix in
// int8: NAME.q and NAME.scale). Versions 1 (no checksum) and 2 still load.
constexpr unsigned kModelVersion = 3;
// No dimension of any entry may exceed this (sizes then fit an int with room for 4 * H and sums).
constexpr uint32_t kMaxDim = 1u << 24;

// A malformed, foreign or inconsistent file: the message names the file and the entry.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The parsed entries of one file; every accessor checks type and shape and throws FormatError.
class ModelFile {
 public:
  // `bytes` is the whole file; `name` is what errors call it (a path, or "<bytes>").
  ModelFile(const std::string& bytes, const std::string& name);
  static ModelFile open(const std::string& path);

  bool has(const std::string& entry) const { return entries_.count(entry) != 0; }
  const std::string& name() const { return name_; }
  unsigned version() const { return version_; }
  bool checksummed() const { return version_ >= 2; }
  // Throws FormatError naming the first entry no accessor has read: a whole model uses every entry.
  void check_all_used() const;
  [[noreturn]] void fail(const std::string& what) const { throw FormatError(name_ + ": " + what); }

  std::vector<float> floats(const std::string& entry, int ndim = 1) const;
  std::vector<int32_t> ints(const std::string& entry, size_t n) const;
  std::vector<uint32_t> dims(const std::string& entry) const;
  MatrixWeights matrix(const std::string& entry) const;
  LinearWeights linear(const std::string& entry) const;
  StackWeights stack(const std::string& prefix) const;
  FrontendWeights frontend() const;
  DecoderWeights decoder() const;
  DecodeLimits limits() const;
  LmWeights lm() const;

 private:
  struct Entry {
    char type = 'f';
    std::vector<uint32_t> dims;
    std::vector<float> f;
    std::vector<int32_t> i;
    std::vector<int8_t> b;
    mutable bool used = false;
  };
  const Entry& get(const std::string& entry, char type, int ndim) const;
  // A 2-D float matrix NAME, or NAME.q (int8, no -128) and NAME.scale (a finite scale >= 0 per row)
  // as its values q x scale, with whether it is int8.
  std::vector<float> weights(const std::string& entry, std::vector<uint32_t>& dims, bool& int8) const;
  // Whether the file holds the weights NAME, float or int8.
  bool has_weights(const std::string& entry) const { return has(entry) || has(entry + ".q"); }
  // w.validate(), its std::invalid_argument thrown again as a FormatError naming this file.
  template <class Weights>
  void validate(const Weights& w, const std::string& what = "") const {
    try {
      w.validate();
    } catch (const std::invalid_argument& err) {
      fail(what + err.what());
    }
  }

  std::string name_;
  unsigned version_ = 0;
  std::map<std::string, Entry> entries_;
};

struct ModelWeights {
  FrontendWeights frontend;
  StackWeights encoder;
  DecoderWeights decoder;
  DecodeLimits limits;
  std::vector<int> vocab;  // code point per token; 0: prints nothing
  bool has_lm = false;     // a character LM for shallow fusion (entries lm.*), optional
  LmWeights lm;
};

// The whole model; throws FormatError naming the file and the entry that is missing or inconsistent.
ModelWeights read_model(const ModelFile& file);

// A character LM alone (a file of lm.* entries, beside the model file).
LmWeights read_lm(const ModelFile& file);

// Every weight matrix of the model (encoder, decoder LSTM, projections) applied in int8, or all in float.
void set_int8(ModelWeights& m, bool on);

}  // namespace lrk
