#include "model_file.h"

#include <cstdint>
#include <fstream>
#include <map>
#include <stdexcept>

namespace lrk {
namespace {

struct Entry {
  char type = 'f';
  std::vector<uint32_t> dims;
  std::vector<float> f;
  std::vector<int32_t> i;
};

class Entries {
 public:
  explicit Entries(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("cannot open model file");
    char magic[4] = {};
    if (!in.read(magic, 4) || std::string(magic, 4) != "LRKM") fail("not a model file (magic is not LRKM)");
    const uint32_t version = u32(in, "version");
    if (version != kModelVersion)
      fail("format version " + std::to_string(version) + ", this build reads " + std::to_string(kModelVersion));
    const uint32_t count = u32(in, "the entry count");
    for (uint32_t k = 0; k < count; ++k) {
      const uint32_t len = u32(in, "a name length");
      if (len == 0 || len > 256) fail("entry " + std::to_string(k) + ": name length out of range");
      std::string name(len, '\0');
      if (!in.read(&name[0], len)) fail("truncated (reading entry " + std::to_string(k) + "'s name)");
      Entry e;
      if (!in.read(&e.type, 1) || (e.type != 'f' && e.type != 'i')) fail(name + ": type must be 'f' or 'i'");
      const uint32_t ndim = u32(in, name.c_str());
      if (ndim > 4) fail(name + ": more than 4 dimensions");
      size_t n = 1;
      for (uint32_t d = 0; d < ndim; ++d) {
        e.dims.push_back(u32(in, name.c_str()));
        n *= e.dims.back();
        if (n > (size_t(1) << 30)) fail(name + ": implausibly large");
      }
      char* dst;
      if (e.type == 'f') {
        e.f.resize(n);
        dst = reinterpret_cast<char*>(e.f.data());
      } else {
        e.i.resize(n);
        dst = reinterpret_cast<char*>(e.i.data());
      }
      if (!in.read(dst, std::streamsize(n * 4))) fail("truncated (reading " + name + ")");
      entries_[name] = std::move(e);
    }
    if (in.peek() != std::char_traits<char>::eof()) fail("trailing bytes after the last entry");
  }

  [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error(path_ + ": " + what); }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }

  const Entry& get(const std::string& name, char type, int ndim) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("missing entry '" + name + "'");
    if (it->second.type != type || int(it->second.dims.size()) != ndim)
      fail("entry '" + name + "': expected " + (type == 'f' ? "float32" : "int32") + " with " + std::to_string(ndim) +
           " dimension(s)");
    return it->second;
  }
  std::vector<float> floats(const std::string& name, int ndim = 1) const { return get(name, 'f', ndim).f; }
  std::vector<int32_t> ints(const std::string& name, size_t n) const {
    const Entry& e = get(name, 'i', 1);
    if (e.i.size() != n) fail("entry '" + name + "': expected " + std::to_string(n) + " values");
    return e.i;
  }

  MatrixWeights matrix(const std::string& name) const {
    MatrixWeights m;
    if (has(name)) {
      const Entry& e = get(name, 'f', 2);
      m.rows = int(e.dims[0]);
      m.cols = int(e.dims[1]);
      m.w = e.f;
    } else {
      const Entry &u = get(name + ".U", 'f', 2), &v = get(name + ".V", 'f', 2);
      if (u.dims[1] != v.dims[0]) fail("entry '" + name + "': the ranks of U and V differ");
      m.rows = int(u.dims[0]);
      m.cols = int(v.dims[1]);
      m.rank = int(u.dims[1]);
      m.u = u.f;
      m.v = v.f;
    }
    return m;
  }

  LinearWeights linear(const std::string& name) const {
    return {matrix(name), has(name + ".bias") ? floats(name + ".bias") : std::vector<float>{}};
  }

  StackWeights stack(const std::string& prefix, int directions) const {
    StackWeights s;
    s.directions = directions;
    const int cells = ints(prefix + ".cells", 1)[0];
    if (directions < 1 || cells < 1 || cells % directions) fail("entry '" + prefix + ".cells': out of range");
    s.layers = cells / directions;
    for (int k = 0; k < cells; ++k) {
      const std::string p = prefix + "." + std::to_string(k);
      CellWeights c;
      c.ih = matrix(p + ".ih");
      c.hh = matrix(p + ".hh");
      c.bias = floats(p + ".bias");
      c.input = c.ih.cols;
      c.hidden = c.hh.cols;
      s.cells.push_back(std::move(c));
    }
    return s;
  }

 private:
  uint32_t u32(std::ifstream& in, const char* what) const {
    uint32_t v = 0;
    if (!in.read(reinterpret_cast<char*>(&v), 4)) fail(std::string("truncated (reading ") + what + ")");
    return v;
  }

  std::string path_;
  std::map<std::string, Entry> entries_;
};

}  // namespace

ModelWeights read_model(const std::string& path) {
  const Entries e(path);
  ModelWeights m;
  FrontendWeights& f = m.frontend;
  const std::vector<int32_t> fi = e.ints("frontend.ints", 5);
  f.frame_length = fi[0];
  f.frame_shift = fi[1];
  f.fft_size = fi[2];
  f.channels = fi[3];
  f.time_stride = fi[4];
  f.preemphasis = e.floats("frontend.preemphasis").at(0);
  f.window = e.floats("frontend.window");
  f.mel = e.floats("frontend.mel", 2);
  f.mel_bins = int(e.get("frontend.mel", 'f', 2).dims[0]);
  f.mean = e.floats("frontend.mean");
  f.std = e.floats("frontend.std");
  f.conv1_w = e.floats("frontend.conv1_w");
  f.conv1_b = e.floats("frontend.conv1_b");
  f.conv2_w = e.floats("frontend.conv2_w");
  f.conv2_b = e.floats("frontend.conv2_b");
  m.encoder = e.stack("encoder", e.ints("encoder.directions", 1)[0]);
  DecoderWeights& d = m.decoder;
  d.embedding = e.floats("decoder.embedding", 2);
  d.embed = int(e.get("decoder.embedding", 'f', 2).dims[1]);
  d.lstm = e.stack("decoder.lstm", 1);
  d.key = e.linear("decoder.key");
  d.query = e.linear("decoder.query");
  d.loc_conv = e.floats("decoder.loc_conv", 2);
  d.loc = e.linear("decoder.loc");
  d.energy = e.linear("decoder.energy");
  d.out = e.linear("decoder.out");
  d.ctc = e.linear("decoder.ctc");
  const std::vector<int32_t> tokens = e.ints("decoder.tokens", 3);
  d.sos = tokens[0];
  d.eos = tokens[1];
  d.blank = tokens[2];
  const std::vector<float> limits = e.floats("decoder.limits");
  if (limits.size() != 4) e.fail("entry 'decoder.limits': expected 4 values");
  m.limits = {limits[0], limits[1], int(limits[2]), int(limits[3])};
  const Entry& vocab = e.get("vocab", 'i', 1);
  m.vocab.assign(vocab.i.begin(), vocab.i.end());
  try {
    f.validate();
    m.encoder.validate();
    d.validate();
  } catch (const std::invalid_argument& err) {
    e.fail(err.what());
  }
  if (int(m.vocab.size()) != d.out.w.rows) e.fail("entry 'vocab': one code point per output token expected");
  return m;
}

}  // namespace lrk
