#include "matrix.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace lrk {

Matrix Matrix::make(const Kernels& kern, const MatrixWeights& m, const std::vector<int>& row_of) {
  Matrix out;
  out.rank = m.rank;
  out.floats = m.floats();
  out.int8 = m.int8;
  // Each of W (or V, then U) packed as float or, quantised row by row, as int8.
  auto put = [&](const std::vector<float>& w, int rows, int cols, const std::vector<int>& rows_of, Packed& f,
                 Packed8& q) {
    if (m.int8)
      q = pack8(kern, w.data(), rows, cols, cols, rows_of);
    else
      f = pack(kern, w.data(), rows, cols, cols, rows_of);
  };
  if (m.rank == 0) {
    put(m.w, m.rows, m.cols, row_of, out.a, out.a8);
  } else {
    put(m.v, m.rank, m.cols, {}, out.v, out.v8);
    put(m.u, m.rows, m.rank, row_of, out.a, out.a8);
  }
  return out;
}

size_t Matrix::bytes() const {
  if (!int8) return floats * sizeof(float);
  const size_t scales = size_t(a8.m) + (rank ? size_t(v8.m) : 0);
  return floats + scales * sizeof(float);
}

void Matrix::apply8(const Kernels& kern, const Packed8& w, const float* x, int rows, int ldx, float* y, int ldy,
                    bool accumulate, Scratch& tmp) {
  tmp.q.resize(size_t(rows) * w.kp);
  tmp.scale.resize(size_t(rows));
  kern.quantize(x, rows, ldx, w.k, w.kp, tmp.q.data(), w.kp, tmp.scale.data());
  kern.matmul_i8(tmp.q.data(), rows, w.kp, tmp.scale.data(), w.data.data(), w.scale.data(), w.rowsum.data(), w.mp,
                 w.kp, y, ldy, accumulate);
}

void Matrix::apply(const Kernels& kern, const float* x, int rows, int ldx, float* y, int ldy, bool accumulate,
                   Scratch& tmp) const {
  if (rank == 0) {
    if (int8) return apply8(kern, a8, x, rows, ldx, y, ldy, accumulate, tmp);
    return kern.matmul(x, rows, ldx, a.data.data(), a.mp, a.k, y, ldy, accumulate);
  }
  const int mp = int8 ? v8.mp : v.mp;
  tmp.f.resize(size_t(rows) * mp);
  if (int8)
    apply8(kern, v8, x, rows, ldx, tmp.f.data(), mp, false, tmp);
  else
    kern.matmul(x, rows, ldx, v.data.data(), v.mp, v.k, tmp.f.data(), v.mp, false);
  apply_u(kern, tmp.f.data(), rows, mp, y, ldy, accumulate, tmp);
}

void Matrix::apply_u(const Kernels& kern, const float* vx, int rows, int ldvx, float* y, int ldy, bool accumulate,
                     Scratch& tmp) const {
  if (int8) return apply8(kern, a8, vx, rows, ldvx, y, ldy, accumulate, tmp);
  kern.matmul(vx, rows, ldvx, a.data.data(), a.mp, a.k, y, ldy, accumulate);
}

Linear Linear::make(const Kernels& kern, const LinearWeights& w) {
  Linear l{Matrix::make(kern, w.w), {}};
  l.bias.assign(size_t(l.m.out_padded()), 0.0f);
  std::copy(w.bias.begin(), w.bias.end(), l.bias.begin());
  return l;
}

void Linear::apply(const Kernels& kern, const float* x, int rows, int ldx, float* y, Scratch& tmp) const {
  const int ldy = m.out_padded();
  for (int r = 0; r < rows; ++r) std::copy(bias.begin(), bias.end(), y + size_t(r) * ldy);
  m.apply(kern, x, rows, ldx, y, ldy, true, tmp);
}

std::string linear_mismatch(const LinearWeights& l, int rows, int cols, bool bias) {
  const MatrixWeights& m = l.w;
  if (m.rows != rows || m.cols != cols)
    return "shape " + std::to_string(m.rows) + "x" + std::to_string(m.cols) + ", expected " + std::to_string(rows) +
           "x" + std::to_string(cols);
  if (m.rank < 0 || m.rank > std::min(rows, cols)) return "rank " + std::to_string(m.rank) + " out of range";
  if (m.rank ? m.u.size() != size_t(rows) * m.rank || m.v.size() != size_t(m.rank) * cols
             : m.w.size() != size_t(rows) * cols)
    return "number of values does not match its shape and rank";
  if (l.bias.size() != (bias ? size_t(rows) : 0)) return bias ? "needs a bias of its rows" : "takes no bias";
  return "";
}

void log_softmax(const float* x, int n, float* y) {
  const float top = *std::max_element(x, x + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(x[i] - top));
  const float norm = float(std::log(sum));
  for (int i = 0; i < n; ++i) y[i] = x[i] - top - norm;
}

}  // namespace lrk
