// A weight matrix on packed panels, dense or factored (W = U V), and the product it applies: what
// the LSTM cells and the decoder's projections share.
#pragma once
#include <string>
#include <vector>

#include "lstm_kernels.h"
#include "lstm_weights.h"

namespace lrk {

// What a product needs besides its weights: the intermediate of a factored one, and x quantised.
struct Scratch {
  FloatBuffer f, scale;
  ByteBuffer q;
};

struct Matrix {
  int rank = 0;       // 0: dense, in `a`; else U in `a`, V in `v`
  size_t floats = 0;  // of the unpadded weights: multiply-adds per row of x
  bool int8 = false;  // the weights in a8 and v8 instead
  Packed a, v;
  Packed8 a8, v8;

  // row_of: as pack()'s, applied to the output rows (how LSTM gate blocks are padded); empty: none.
  static Matrix make(const Kernels& kern, const MatrixWeights& m, const std::vector<int>& row_of = {});
  int out_padded() const { return int8 ? a8.mp : a.mp; }
  // Weight bytes streamed per row of x (an int8 matrix's row scales included).
  size_t bytes() const;
  // y[r][0..out_padded()) = (accumulate ? y : 0) + x[r] . W^T for r < rows.
  void apply(const Kernels& kern, const float* x, int rows, int ldx, float* y, int ldy, bool accumulate,
             Scratch& tmp) const;
  // A factored matrix's second product alone: y = (accumulate ? y : 0) + vx . U^T, where vx
  // (rows x rank, row stride ldvx) is x . V^T, formed by the caller.
  void apply_u(const Kernels& kern, const float* vx, int rows, int ldvx, float* y, int ldy, bool accumulate,
               Scratch& tmp) const;

 private:
  // The int8 product of one packed matrix: x quantised row by row, then matmul_i8.
  static void apply8(const Kernels& kern, const Packed8& w, const float* x, int rows, int ldx, float* y, int ldy,
                     bool accumulate, Scratch& tmp);
};

// y = x W^T (+ bias): W dense or factored; an empty bias is none.
struct LinearWeights {
  MatrixWeights w;
  std::vector<float> bias;
};

// A LinearWeights packed, its bias padded to the matrix's output rows (zeros where it has none).
struct Linear {
  Matrix m;
  FloatBuffer bias;
  static Linear make(const Kernels& kern, const LinearWeights& w);
  // y[r] = bias + x[r] . W^T for r < rows, y's rows m.out_padded() apart.
  void apply(const Kernels& kern, const float* x, int rows, int ldx, float* y, Scratch& tmp) const;
};

// "" when l is rows x cols with a bias of its rows (when `bias`) or none, else what is wrong.
std::string linear_mismatch(const LinearWeights& l, int rows, int cols, bool bias);

// y = log_softmax(x) over n values (the normaliser summed in double).
void log_softmax(const float* x, int n, float* y);

}  // namespace lrk
