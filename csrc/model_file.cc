#include "model_file.h"

#include <cmath>
#include <cstring>

#include "file_bytes.h"

namespace lrk {
namespace {

// Reads the file whole: entries are checked against the bytes actually there before anything is
// allocated for them, so a short file cannot ask for gigabytes.
class Cursor {
 public:
  Cursor(const char* data, size_t size, const ModelFile& file) : b_(data), size_(size), file_(file) {}
  size_t left() const { return size_ - pos_; }
  void take(void* dst, size_t n, const std::string& what) {
    if (n > left()) file_.fail("truncated (reading " + what + ")");
    std::memcpy(dst, b_ + pos_, n);
    pos_ += n;
  }
  uint32_t u32(const std::string& what) {
    uint32_t v = 0;
    take(&v, 4, what);
    return v;
  }

 private:
  const char* b_;
  size_t size_;
  const ModelFile& file_;
  size_t pos_ = 0;
};

}  // namespace

// CRC-32 (the zlib polynomial, as Python's zlib.crc32), bitwise: a model file is read once.
static uint32_t crc32(const char* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t k = 0; k < n; ++k) {
    c ^= uint8_t(p[k]);
    for (int j = 0; j < 8; ++j) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

ModelFile::ModelFile(const std::string& bytes, const std::string& name) : name_(name) {
  char magic[4] = {};
  if (bytes.size() < 12 || (std::memcpy(magic, bytes.data(), 4), std::string(magic, 4) != "LRKM"))
    fail("not a model file (magic is not LRKM)");
  std::memcpy(&version_, bytes.data() + 4, 4);
  if (version_ < 1 || version_ > kModelVersion)
    fail("format version " + std::to_string(version_) + ", this build reads 1 to " + std::to_string(kModelVersion));
  size_t size = bytes.size();
  if (version_ >= 2) {
    if (size < 16) fail("truncated (no checksum)");
    uint32_t stored = 0;
    std::memcpy(&stored, bytes.data() + size - 4, 4);
    const bool intact = crc32(bytes.data(), size - 4) == stored;
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // a fuzzer's mutations would stop here: let them through
    if (!intact) fail("checksum mismatch: the file is corrupted or truncated");
#else
    (void)intact;
#endif
    size -= 4;
  }
  Cursor in(bytes.data(), size, *this);
  in.take(magic, 4, "the magic");
  in.u32("version");
  const uint32_t count = in.u32("the entry count");
  if (count > in.left() / 10) fail("truncated (" + std::to_string(count) + " entries declared)");
  for (uint32_t k = 0; k < count; ++k) {
    const uint32_t len = in.u32("a name length");
    if (len == 0 || len > 256) fail("entry " + std::to_string(k) + ": name length out of range");
    if (len > in.left()) fail("truncated (reading entry " + std::to_string(k) + "'s name)");
    std::string entry(len, '\0');
    in.take(&entry[0], len, "a name");
    for (char c : entry)
      if (c < 0x21 || c > 0x7E) fail("entry " + std::to_string(k) + ": the name is not printable ASCII");
    if (has(entry)) fail("entry '" + entry + "' appears twice");
    Entry e;
    in.take(&e.type, 1, entry);
    if (e.type != 'f' && e.type != 'i' && (e.type != 'b' || version_ < 3))
      fail("entry '" + entry + "': type must be 'f' or 'i'" + (version_ >= 3 ? " or 'b'" : ""));
    const size_t width = e.type == 'b' ? 1 : 4;
    const uint32_t ndim = in.u32(entry);
    if (ndim > 4) fail("entry '" + entry + "': more than 4 dimensions");
    size_t n = 1;
    for (uint32_t d = 0; d < ndim; ++d) {
      e.dims.push_back(in.u32(entry));
      if (e.dims.back() < 1 || e.dims.back() > kMaxDim)
        fail("entry '" + entry + "': dimension " + std::to_string(d) + " is " + std::to_string(e.dims.back()) +
             ", outside 1.." + std::to_string(kMaxDim));
      n *= e.dims.back();  // each factor <= 2^24 and the product so far <= left / 4: no overflow
      if (n > in.left() / width) fail("truncated (entry '" + entry + "' declares more values than the file holds)");
    }
    if (e.type == 'b') {
      e.b.resize(n);
      in.take(e.b.data(), n, entry);
    } else if (e.type == 'f') {
      e.f.resize(n);
      in.take(e.f.data(), n * 4, entry);
      for (size_t v = 0; v < n; ++v)
        if (!std::isfinite(e.f[v])) fail("entry '" + entry + "': value " + std::to_string(v) + " is not finite");
    } else {
      e.i.resize(n);
      in.take(e.i.data(), n * 4, entry);
    }
    entries_[entry] = std::move(e);
  }
  if (in.left()) fail("trailing bytes after the last entry");
}

void ModelFile::check_all_used() const {
  for (const auto& [entry, e] : entries_)
    if (!e.used) fail("entry '" + entry + "': not part of a model file");
}

ModelFile ModelFile::open(const std::string& path) {
  std::string bytes;
  try {
    bytes = read_bytes(path);
  } catch (const std::runtime_error& err) {
    throw FormatError(err.what());  // a ValueError in Python, as every other fault of a model file
  }
  return ModelFile(bytes, path);
}

const ModelFile::Entry& ModelFile::get(const std::string& entry, char type, int ndim) const {
  auto it = entries_.find(entry);
  if (it == entries_.end()) fail("missing entry '" + entry + "'");
  if (it->second.type != type || int(it->second.dims.size()) != ndim)
    fail("entry '" + entry + "': expected " + (type == 'f' ? "float32" : type == 'b' ? "int8" : "int32") + " with " +
         std::to_string(ndim) +
         " dimension(s)");
  it->second.used = true;
  return it->second;
}

std::vector<float> ModelFile::floats(const std::string& entry, int ndim) const { return get(entry, 'f', ndim).f; }

std::vector<int32_t> ModelFile::ints(const std::string& entry, size_t n) const {
  const Entry& e = get(entry, 'i', 1);
  if (e.i.size() != n) fail("entry '" + entry + "': expected " + std::to_string(n) + " values");
  return e.i;
}

std::vector<uint32_t> ModelFile::dims(const std::string& entry) const {
  auto it = entries_.find(entry);
  if (it == entries_.end()) fail("missing entry '" + entry + "'");
  it->second.used = true;
  return it->second.dims;
}

std::vector<float> ModelFile::weights(const std::string& entry, std::vector<uint32_t>& dims, bool& int8) const {
  int8 = !has(entry) && has(entry + ".q");
  if (!int8) {
    const Entry& e = get(entry, 'f', 2);
    dims = e.dims;
    return e.f;
  }
  const Entry& q = get(entry + ".q", 'b', 2);
  const Entry& s = get(entry + ".scale", 'f', 1);
  if (s.dims[0] != q.dims[0]) fail("entry '" + entry + ".scale': " + std::to_string(s.dims[0]) + " scales for " +
                                   std::to_string(q.dims[0]) + " rows");
  dims = q.dims;
  std::vector<float> w(q.b.size());
  const size_t cols = q.dims[1];
  for (size_t r = 0; r < dims[0]; ++r) {
    const float scale = s.f[r];
    if (!(scale >= 0 && scale <= 1e30f))
      fail("entry '" + entry + ".scale': row " + std::to_string(r) + " has a negative or huge scale");
    for (size_t k = r * cols; k < (r + 1) * cols; ++k) {
      if (q.b[k] == -128)
        fail("entry '" + entry + ".q': value " + std::to_string(k) + " is -128 (int8 weights lie in [-127, 127])");
      w[k] = float(q.b[k]) * scale;
    }
  }
  return w;
}

MatrixWeights ModelFile::matrix(const std::string& entry) const {
  MatrixWeights m;
  std::vector<uint32_t> du, dv;
  if (has_weights(entry)) {
    m.w = weights(entry, du, m.int8);
    m.rows = int(du[0]);
    m.cols = int(du[1]);
  } else {
    bool u8 = false, v8 = false;
    m.u = weights(entry + ".U", du, u8);
    m.v = weights(entry + ".V", dv, v8);
    if (du[1] != dv[0]) fail("entry '" + entry + "': the ranks of U and V differ");
    if (u8 != v8) fail("entry '" + entry + "': U and V must both be int8 or both float");
    m.int8 = u8;
    m.rows = int(du[0]);
    m.cols = int(dv[1]);
    m.rank = int(du[1]);
  }
  return m;
}

LinearWeights ModelFile::linear(const std::string& entry) const {
  return {matrix(entry), has(entry + ".bias") ? floats(entry + ".bias") : std::vector<float>{}};
}

StackWeights ModelFile::stack(const std::string& prefix) const {
  StackWeights s;
  s.directions = has(prefix + ".directions") ? ints(prefix + ".directions", 1)[0] : 1;
  const int cells = ints(prefix + ".cells", 1)[0];
  if (s.directions < 1 || s.directions > 2 || cells < 1 || cells > 256 || cells % s.directions)
    fail("entries '" + prefix + ".cells', '" + prefix + ".directions': out of range");
  s.layers = cells / s.directions;
  for (int k = 0; k < cells; ++k) {
    const std::string p = prefix + "." + std::to_string(k);
    CellWeights c;
    c.ih = matrix(p + ".ih");
    c.hh = matrix(p + ".hh");
    c.bias = floats(p + ".bias");
    c.input = c.ih.cols;
    c.hidden = c.hh.cols;
    if (has_weights(p + ".hr") || has_weights(p + ".hr.U")) {  // an LSTM with projections
      c.hr = matrix(p + ".hr");
      c.proj = c.hr.rows;
      c.hidden = c.hr.cols;
    }
    s.cells.push_back(std::move(c));
  }
  validate(s, "stack '" + prefix + "': ");
  return s;
}

FrontendWeights ModelFile::frontend() const {
  FrontendWeights f;
  const std::vector<int32_t> fi = ints("frontend.ints", 5);
  f.frame_length = fi[0];
  f.frame_shift = fi[1];
  f.fft_size = fi[2];
  f.channels = fi[3];
  f.time_stride = fi[4];
  // Optional (files written before it lack it): the rate the model's features were computed at.
  if (has("frontend.sample_rate") && ints("frontend.sample_rate", 1)[0] != 16000)
    fail("entry 'frontend.sample_rate': " + std::to_string(ints("frontend.sample_rate", 1)[0]) +
         " Hz; this runtime's front end takes 16000 Hz samples");
  const std::vector<float> pre = floats("frontend.preemphasis");
  if (pre.size() != 1) fail("entry 'frontend.preemphasis': expected 1 value");
  f.preemphasis = pre[0];
  f.window = floats("frontend.window");
  f.mel = floats("frontend.mel", 2);
  f.mel_bins = int(dims("frontend.mel")[0]);
  f.mean = floats("frontend.mean");
  f.std = floats("frontend.std");
  f.conv1_w = floats("frontend.conv1_w");
  f.conv1_b = floats("frontend.conv1_b");
  f.conv2_w = floats("frontend.conv2_w");
  f.conv2_b = floats("frontend.conv2_b");
  validate(f);
  return f;
}

DecoderWeights ModelFile::decoder() const {
  DecoderWeights d;
  d.embedding = floats("decoder.embedding", 2);
  d.embed = int(dims("decoder.embedding")[1]);
  d.lstm = stack("decoder.lstm");
  if (d.lstm.cells[0].proj) fail("stack 'decoder.lstm': the attention decoder's LSTM takes no projection");
  d.key = linear("decoder.key");
  d.query = linear("decoder.query");
  d.loc_conv = floats("decoder.loc_conv", 2);
  const std::vector<uint32_t> conv = dims("decoder.loc_conv");
  d.loc = linear("decoder.loc");
  d.energy = linear("decoder.energy");
  d.out = linear("decoder.out");
  d.ctc = linear("decoder.ctc");
  if (int(conv[0]) != d.loc.w.cols)
    fail("entry 'decoder.loc_conv': " + std::to_string(conv[0]) + " channels, decoder.loc takes " +
         std::to_string(d.loc.w.cols));
  const std::vector<int32_t> tokens = ints("decoder.tokens", 3);
  d.sos = tokens[0];
  d.eos = tokens[1];
  d.blank = tokens[2];
  validate(d);
  return d;
}

LmWeights ModelFile::lm() const {
  LmWeights l;
  l.embedding = floats("lm.embedding", 2);
  l.embed = int(dims("lm.embedding")[1]);
  l.lstm = stack("lm.lstm");
  l.out = linear("lm.out");
  validate(l);
  return l;
}

DecodeLimits ModelFile::limits() const {
  const std::vector<float> v = floats("decoder.limits");  // finite, as every float entry
  if (v.size() != 4) fail("entry 'decoder.limits': expected 4 values");
  // Checked before any becomes an integer; the caps keep a decode to at most ~100 steps a frame.
  if (!(v[0] > 0 && v[0] <= 100)) fail("entry 'decoder.limits': max_len_ratio must be in (0, 100]");
  if (!(v[1] >= 0 && v[1] <= 100)) fail("entry 'decoder.limits': ctc_len_ratio must be in [0, 100]");
  if (!(v[2] >= 0 && v[2] <= 10000 && v[3] >= 0 && v[3] <= 10000))
    fail("entry 'decoder.limits': ctc_len_margin and min_len must be in [0, 10000]");
  return {v[0], v[1], int(v[2]), int(v[3])};
}

ModelWeights read_model(const ModelFile& file) {
  ModelWeights m;
  m.frontend = file.frontend();
  m.encoder = file.stack("encoder");
  m.decoder = file.decoder();
  m.limits = file.limits();
  const std::vector<int32_t> vocab = file.ints("vocab", size_t(m.decoder.out.w.rows));
  for (size_t t = 0; t < vocab.size(); ++t) {
    const int32_t cp = vocab[t];
    // 0 prints nothing; otherwise a printable Unicode scalar value: no C0/C1 controls, no surrogates
    const bool ok = cp == 0 || (cp >= 0x20 && cp < 0x7F) || (cp >= 0xA0 && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF));
    if (!ok) file.fail("entry 'vocab': token " + std::to_string(t) + " has code point " + std::to_string(cp) +
                       ", not a printable Unicode character");
  }
  m.vocab.assign(vocab.begin(), vocab.end());
  if (file.has("lm.embedding")) {
    m.lm = file.lm();
    m.has_lm = true;
  }
  file.check_all_used();
  return m;
}

LmWeights read_lm(const ModelFile& file) {
  LmWeights l = file.lm();
  file.check_all_used();
  return l;
}

void set_int8(ModelWeights& m, bool on) {
  m.encoder.set_int8(on);
  m.lm.lstm.set_int8(on);
  m.lm.out.w.int8 = on;
  m.decoder.lstm.set_int8(on);
  for (LinearWeights* l : {&m.decoder.key, &m.decoder.query, &m.decoder.loc, &m.decoder.energy, &m.decoder.out,
                           &m.decoder.ctc})
    l->w.int8 = on;
}

}  // namespace lrk
