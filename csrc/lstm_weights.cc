#include "lstm_weights.h"

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
  const int hidden = cells[0].hidden, proj = cells[0].proj, state = cells[0].state();
  for (int l = 0; l < layers; ++l)
    for (int d = 0; d < directions; ++d) {
      const CellWeights& c = cell(l, d);
      const int input = l == 0 ? cells[0].input : directions * state;
      if (c.hidden != hidden || hidden < 1) throw std::invalid_argument(where(l, d, "hidden") + ": sizes differ");
      if (c.proj != proj || proj < 0 || proj > hidden)
        throw std::invalid_argument(where(l, d, "hr") + ": projection sizes differ or exceed the hidden size");
      if (c.input != input || input < 1)
        throw std::invalid_argument(where(l, d, "input") + ": " + std::to_string(c.input) + ", expected " +
                                    std::to_string(input));
      check_matrix(c.ih, 4 * hidden, input, where(l, d, "ih"));
      check_matrix(c.hh, 4 * hidden, state, where(l, d, "hh"));
      if (proj) check_matrix(c.hr, proj, hidden, where(l, d, "hr"));
      if (c.bias.size() != size_t(4) * hidden) throw std::invalid_argument(where(l, d, "bias") + ": needs 4H values");
    }
}

void StackWeights::set_int8(bool on) {
  for (CellWeights& c : cells) c.ih.int8 = c.hh.int8 = c.hr.int8 = on;
}

}  // namespace lrk
