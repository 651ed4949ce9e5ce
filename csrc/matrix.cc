#include "matrix.h"

namespace lrk {

Matrix Matrix::make(const Kernels& kern, const MatrixWeights& m, const std::vector<int>& row_of) {
  Matrix out;
  out.rank = m.rank;
  out.floats = m.floats();
  if (m.rank == 0) {
    out.a = pack(kern, m.w.data(), m.rows, m.cols, m.cols, row_of);
  } else {
    out.v = pack(kern, m.v.data(), m.rank, m.cols, m.cols);
    out.a = pack(kern, m.u.data(), m.rows, m.rank, m.rank, row_of);
  }
  return out;
}

void Matrix::apply(const Kernels& kern, const float* x, int rows, int ldx, float* y, int ldy, bool accumulate,
                   FloatBuffer& tmp) const {
  if (rank == 0) return kern.matmul(x, rows, ldx, a.data.data(), a.mp, a.k, y, ldy, accumulate);
  tmp.resize(size_t(rows) * v.mp);
  kern.matmul(x, rows, ldx, v.data.data(), v.mp, v.k, tmp.data(), v.mp, false);
  apply_u(kern, tmp.data(), rows, v.mp, y, ldy, accumulate);
}

void Matrix::apply_u(const Kernels& kern, const float* vx, int rows, int ldvx, float* y, int ldy,
                     bool accumulate) const {
  kern.matmul(vx, rows, ldvx, a.data.data(), a.mp, a.k, y, ldy, accumulate);
}

}  // namespace lrk
