#include "lstm_weights.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace lrk {
namespace {

std::string where(int layer, int dir, const char* field) {
  return "layer " + std::to_string(layer) + (dir ? " (reverse)" : "") + ", " + field;
}

void check_matrix(const MatrixWeights& m, int rows, int cols, const std::string& at) {
  if (m.rows != rows || m.cols != cols)
    throw std::invalid_argument(at + ": shape " + std::to_string(m.rows) + "x" + std::to_string(m.cols) +
                                ", expected " + std::to_string(rows) + "x" + std::to_string(cols));
  const int limit = rows < cols ? rows : cols;
  if (m.rank < 0 || m.rank > limit)
    throw std::invalid_argument(at + ": rank " + std::to_string(m.rank) + " outside 1.." + std::to_string(limit));
  const bool ok = m.rank == 0 ? m.w.size() == size_t(rows) * cols
                              : m.u.size() == size_t(rows) * m.rank && m.v.size() == size_t(m.rank) * cols;
  if (!ok) throw std::invalid_argument(at + ": number of values does not match its shape and rank");
}

}  // namespace

void StackWeights::validate() const {
  if (layers < 1 || (directions != 1 && directions != 2))
    throw std::invalid_argument("stack: needs at least one layer and 1 or 2 directions");
  if (cells.size() != size_t(layers) * directions)
    throw std::invalid_argument("stack: " + std::to_string(cells.size()) + " cells for " + std::to_string(layers) +
                                " layers x " + std::to_string(directions) + " directions");
  const int hidden = cells[0].hidden;
  for (int l = 0; l < layers; ++l)
    for (int d = 0; d < directions; ++d) {
      const CellWeights& c = cell(l, d);
      const int input = l == 0 ? cells[0].input : directions * hidden;
      if (c.hidden != hidden || hidden < 1) throw std::invalid_argument(where(l, d, "hidden") + ": sizes differ");
      if (c.input != input || input < 1)
        throw std::invalid_argument(where(l, d, "input") + ": " + std::to_string(c.input) + ", expected " +
                                    std::to_string(input));
      check_matrix(c.ih, 4 * hidden, input, where(l, d, "ih"));
      check_matrix(c.hh, 4 * hidden, hidden, where(l, d, "hh"));
      if (c.bias.size() != size_t(4) * hidden) throw std::invalid_argument(where(l, d, "bias") + ": needs 4H values");
    }
}

namespace {

struct Reader {
  std::ifstream in;
  std::string path;
  uint32_t u32(const char* what) {
    uint32_t v = 0;
    if (!in.read(reinterpret_cast<char*>(&v), 4)) throw std::runtime_error(path + ": truncated (reading " + what + ")");
    return v;
  }
  std::vector<float> floats(size_t n, const std::string& what) {
    if (n > (size_t(1) << 31)) throw std::runtime_error(path + ": " + what + " is implausibly large");
    std::vector<float> v(n);
    if (!in.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * 4)))
      throw std::runtime_error(path + ": truncated (reading " + what + ")");
    return v;
  }
  void matrix(MatrixWeights& m, int rows, int cols, const std::string& what) {
    m.rows = rows;
    m.cols = cols;
    const int limit = rows < cols ? rows : cols;
    if (m.rank < 0 || m.rank > limit) throw std::runtime_error(path + ": " + what + ": rank " + std::to_string(m.rank) +
                                                               " outside 1.." + std::to_string(limit));
    if (m.rank == 0) {
      m.w = floats(size_t(rows) * cols, what);
    } else {
      m.u = floats(size_t(rows) * m.rank, what + " U");
      m.v = floats(size_t(m.rank) * cols, what + " V");
    }
  }
};

void put(std::ofstream& out, uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); }
void put(std::ofstream& out, const std::vector<float>& v) {
  out.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * 4));
}

}  // namespace

StackWeights read_weights(const std::string& path) {
  Reader r{std::ifstream(path, std::ios::binary), path};
  if (!r.in) throw std::runtime_error(path + ": cannot open weights file");
  char magic[4] = {};
  if (!r.in.read(magic, 4) || std::string(magic, 4) != "LRKW")
    throw std::runtime_error(path + ": not an LSTM weights file (magic is not LRKW)");
  const uint32_t version = r.u32("version");
  if (version != kWeightsVersion)
    throw std::runtime_error(path + ": format version " + std::to_string(version) + ", this build reads " +
                             std::to_string(kWeightsVersion));
  StackWeights s;
  s.layers = int(r.u32("layers"));
  s.directions = int(r.u32("directions"));
  if (s.layers < 1 || s.layers > 64 || (s.directions != 1 && s.directions != 2))
    throw std::runtime_error(path + ": field layers/directions out of range");
  for (int l = 0; l < s.layers; ++l)
    for (int d = 0; d < s.directions; ++d) {
      CellWeights c;
      c.input = int(r.u32("input"));
      c.hidden = int(r.u32("hidden"));
      if (c.input < 1 || c.hidden < 1 || c.input > (1 << 20) || c.hidden > (1 << 20))
        throw std::runtime_error(path + ": " + where(l, d, "input/hidden") + " out of range");
      c.ih.rank = int(r.u32("rank_ih"));
      c.hh.rank = int(r.u32("rank_hh"));
      r.matrix(c.ih, 4 * c.hidden, c.input, where(l, d, "ih"));
      r.matrix(c.hh, 4 * c.hidden, c.hidden, where(l, d, "hh"));
      c.bias = r.floats(size_t(4) * c.hidden, where(l, d, "bias"));
      s.cells.push_back(std::move(c));
    }
  if (r.in.peek() != std::char_traits<char>::eof()) throw std::runtime_error(path + ": trailing bytes after the last cell");
  try {
    s.validate();
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return s;
}

void write_weights(const std::string& path, const StackWeights& s) {
  s.validate();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(tmp + ": cannot write");
    out.write("LRKW", 4);
    put(out, kWeightsVersion);
    put(out, uint32_t(s.layers));
    put(out, uint32_t(s.directions));
    for (const CellWeights& c : s.cells) {
      for (uint32_t v : {uint32_t(c.input), uint32_t(c.hidden), uint32_t(c.ih.rank), uint32_t(c.hh.rank)}) put(out, v);
      for (const MatrixWeights* m : {&c.ih, &c.hh}) {
        if (m->rank == 0) put(out, m->w);
        else { put(out, m->u); put(out, m->v); }
      }
      put(out, c.bias);
    }
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error(tmp + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename the temporary file into place");
  }
}

}  // namespace lrk
