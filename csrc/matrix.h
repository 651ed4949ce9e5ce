// A weight matrix on packed panels, dense or factored (W = U V), and the product it applies: what
// the LSTM cells and the decoder's projections share.
#pragma once
#include <vector>

#include "lstm_kernels.h"
#include "lstm_weights.h"

namespace lrk {

struct Matrix {
  int rank = 0;       // 0: dense, in `a`; else U in `a`, V in `v`
  size_t floats = 0;  // of the unpadded weights: bytes streamed and multiply-adds per row of x
  Packed a, v;

  // row_of: as pack()'s, applied to the output rows (how LSTM gate blocks are padded); empty: none.
  static Matrix make(const Kernels& kern, const MatrixWeights& m, const std::vector<int>& row_of = {});
  int out_padded() const { return a.mp; }
  // y[r][0..out_padded()) = (accumulate ? y : 0) + x[r] . W^T for r < rows; tmp is scratch.
  void apply(const Kernels& kern, const float* x, int rows, int ldx, float* y, int ldy, bool accumulate,
             FloatBuffer& tmp) const;
  // A factored matrix's second product alone: y = (accumulate ? y : 0) + vx . U^T, where vx
  // (rows x rank, row stride ldvx) is x . V^T, formed by the caller.
  void apply_u(const Kernels& kern, const float* vx, int rows, int ldvx, float* y, int ldy, bool accumulate) const;
};

}  // namespace lrk
