// The weights of an LSTM stack as the caller holds them (PyTorch's layout: gates i, f, g, o), and
// the file format that carries them to a device without Python.
//
// File (little-endian): "LRKW", u32 version, u32 layers, u32 directions, then per layer and
// direction: u32 input, u32 hidden, u32 rank_ih, u32 rank_hh (0 = dense), the input matrix
// (dense: 4H x input; factored: U 4H x r then V r x input), the recurrent matrix likewise
// (input = H), and the bias b_ih + b_hh (4H), all float32, nothing after the last cell.
#pragma once
#include <string>
#include <vector>

namespace lrk {

constexpr unsigned kWeightsVersion = 1;

// One weight matrix (rows x cols): dense `w`, or `u` (rows x rank) times `v` (rank x cols).
struct MatrixWeights {
  int rows = 0, cols = 0, rank = 0;  // rank 0: dense
  std::vector<float> w, u, v;
  size_t floats() const { return rank ? size_t(rank) * (rows + cols) : size_t(rows) * cols; }
};

struct CellWeights {
  int input = 0, hidden = 0;
  MatrixWeights ih, hh;     // 4H x input, 4H x H
  std::vector<float> bias;  // 4H
};

struct StackWeights {
  int layers = 0, directions = 1;
  std::vector<CellWeights> cells;  // layer-major: cells[layer * directions + direction]
  const CellWeights& cell(int layer, int dir) const { return cells[size_t(layer) * directions + dir]; }
  // Throws std::invalid_argument naming the cell and field where shapes or sizes disagree.
  void validate() const;
};

// Both throw std::runtime_error naming the file and what is wrong (missing, foreign, truncated,
// newer version, trailing bytes, inconsistent shapes); writes are atomic (temporary file + rename).
StackWeights read_weights(const std::string& path);
void write_weights(const std::string& path, const StackWeights& weights);

}  // namespace lrk
