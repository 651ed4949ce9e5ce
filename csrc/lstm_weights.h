// The weights of an LSTM stack as the runtime holds them (PyTorch's layout: gates i, f, g, o). They
// reach it from a model file (model_file.h), the one format the runtime loads.
#pragma once
#include <string>
#include <vector>

namespace lrk {

// One weight matrix (rows x cols): dense `w`, or `u` (rows x rank) times `v` (rank x cols). int8:
// applied in int8, each row (of w, or of u and of v) quantised symmetrically with its own scale when
// packed; a model file's int8 entries arrive here as their values (q x scale), which quantise back to q.
struct MatrixWeights {
  int rows = 0, cols = 0, rank = 0;  // rank 0: dense
  std::vector<float> w, u, v;
  bool int8 = false;
  size_t floats() const { return rank ? size_t(rank) * (rows + cols) : size_t(rows) * cols; }
};

struct CellWeights {
  int input = 0, hidden = 0, proj = 0;  // proj: P of an LSTM with projections (h = W_hr (o * tanh c)); 0: none
  MatrixWeights ih, hh, hr;  // 4H x input, 4H x (P or H), P x H (absent without projection)
  std::vector<float> bias;   // 4H
  int state() const { return proj ? proj : hidden; }  // the size of h: what the cell outputs
};

struct StackWeights {
  int layers = 0, directions = 1;
  std::vector<CellWeights> cells;  // layer-major: cells[layer * directions + direction]
  const CellWeights& cell(int layer, int dir) const { return cells[size_t(layer) * directions + dir]; }
  // Throws std::invalid_argument naming the cell and field where shapes or sizes disagree.
  void validate() const;
  // Every matrix of every cell applied in int8 (or all in float).
  void set_int8(bool on);
};

}  // namespace lrk
