#include "lstm.h"

#include <algorithm>
#include <stdexcept>

namespace lrk {
namespace {

// Gate blocks i, f, g, o of H rows each become blocks of hp rows (hp a multiple of the vector
// width); the padding rows are zero, so padded gate values stay 0 and padded c, h stay 0.
std::vector<int> gate_rows(int hidden, int hp) {
  std::vector<int> rows(size_t(4) * hp, -1);
  for (int g = 0; g < 4; ++g)
    for (int j = 0; j < hidden; ++j) rows[size_t(g) * hp + j] = g * hidden + j;
  return rows;
}

}  // namespace

LstmStack::LstmStack(const StackWeights& w, const std::string& isa) : kern_(kernels(isa)) {
  w.validate();
  layers_ = w.layers;
  dirs_ = w.directions;
  input_ = w.cells[0].input;
  hidden_ = w.cells[0].hidden;
  proj_ = w.cells[0].proj;
  hp_ = round_up(hidden_, kern_.width);
  sp_ = hp_;
  const std::vector<int> rows = gate_rows(hidden_, hp_);
  for (const CellWeights& c : w.cells) {
    Cell cell{Matrix::make(kern_, c.ih, rows), Matrix::make(kern_, c.hh, rows), {}, FloatBuffer(rows.size(), 0.0f)};
    if (proj_) {
      cell.hr = Matrix::make(kern_, c.hr);
      sp_ = cell.hr.out_padded();
    }
    for (size_t i = 0; i < rows.size(); ++i)
      if (rows[i] >= 0) cell.bias[i] = c.bias[rows[i]];
    cells_.push_back(std::move(cell));
  }
}

void LstmStack::cell_out(const Cell& cell, float* g, int ldg, int batch, float* c, float* h) {
  if (!proj_) {
    kern_.cell(g, ldg, batch, hp_, cell.bias.data(), c, h, hp_);
    return;
  }
  m_.resize(size_t(batch) * hp_);
  kern_.cell(g, ldg, batch, hp_, cell.bias.data(), c, m_.data(), hp_);
  cell.hr.apply(kern_, m_.data(), batch, hp_, h, sp_, false, tmp_);
}

void LstmStack::run_direction(const Cell& cell, const float* x, int ldx, int batch, int frames, bool reverse,
                              float* y, int ldy) {
  const int G = 4 * hp_;
  const int n = batch * frames;
  xp_.resize(size_t(n) * G);
  cell.ih.apply(kern_, x, n, ldx, xp_.data(), G, false, tmp_);  // all frames' input projections at once
  FloatBuffer h(size_t(batch) * sp_, 0.0f), c(size_t(batch) * hp_, 0.0f);
  const int out = state_size();
  for (int t = 0; t < frames; ++t) {
    const int tt = reverse ? frames - 1 - t : t;
    float* g = xp_.data() + size_t(tt) * G;  // row of sequence 0; sequence b is frames * G further
    if (t > 0) cell.hh.apply(kern_, h.data(), batch, sp_, g, frames * G, true, tmp_);
    cell_out(cell, g, frames * G, batch, c.data(), h.data());
    for (int b = 0; b < batch; ++b)
      std::copy_n(h.data() + size_t(b) * sp_, out, y + (size_t(b) * frames + tt) * ldy);
  }
}

void LstmStack::forward(const float* x, int batch, int frames, float* y) {
  if (batch < 1 || frames < 0) throw std::invalid_argument("forward: batch must be >= 1 and frames >= 0");
  if (frames == 0) return;
  FlushDenormals ftz;
  const int out = output_size();
  const float* cur = x;
  int ldx = input_;
  for (int l = 0; l < layers_; ++l) {
    float* dst = y;
    if (l + 1 < layers_) {
      buf_[l % 2].resize(size_t(batch) * frames * out);
      dst = buf_[l % 2].data();
    }
    for (int d = 0; d < dirs_; ++d)
      run_direction(cells_[size_t(l) * dirs_ + d], cur, ldx, batch, frames, d == 1, dst + d * state_size(), out);
    cur = dst;
    ldx = out;
  }
}

void LstmStack::step(const float* x, int batch, float* y) { step_impl(x, batch, y, false); }

void LstmStack::step_factored(const float* vx, int batch, float* y) {
  if (cells_[0].ih.rank == 0) throw std::invalid_argument("step_factored: layer 0's input matrix is dense");
  step_impl(vx, batch, y, true);
}

void LstmStack::step_impl(const float* x, int batch, float* y, bool factored) {
  if (dirs_ != 1) throw std::invalid_argument("step: streaming needs a unidirectional stack (this one has 2 directions)");
  if (batch < 1) throw std::invalid_argument("step: batch must be >= 1");
  const size_t state = size_t(layers_) * batch * sp_;
  if (h_.empty()) {
    h_.assign(state, 0.0f);
    c_.assign(size_t(layers_) * batch * hp_, 0.0f);
  } else if (h_.size() != state) {
    throw std::invalid_argument("step: batch size changed from the previous call; call reset() first");
  }
  FlushDenormals ftz;
  const int G = 4 * hp_;
  gates_.resize(size_t(batch) * G);
  const float* cur = x;
  int ldx = input_;
  for (int l = 0; l < layers_; ++l) {
    const Cell& cell = cells_[l];
    float* h = h_.data() + size_t(l) * batch * sp_;
    float* c = c_.data() + size_t(l) * batch * hp_;
    if (l == 0 && factored)
      cell.ih.apply_u(kern_, cur, batch, cell.ih.rank, gates_.data(), G, false, tmp_);
    else
      cell.ih.apply(kern_, cur, batch, ldx, gates_.data(), G, false, tmp_);
    cell.hh.apply(kern_, h, batch, sp_, gates_.data(), G, true, tmp_);
    cell_out(cell, gates_.data(), G, batch, c, h);
    cur = h;
    ldx = sp_;
  }
  const int out = state_size();
  for (int b = 0; b < batch; ++b) std::copy_n(cur + size_t(b) * sp_, out, y + size_t(b) * out);
}

void LstmStack::select(const int* rows, int n) {
  if (h_.empty()) return;
  const size_t batch = h_.size() / (size_t(layers_) * sp_);
  for (int i = 0; i < n; ++i)
    if (rows[i] < 0 || size_t(rows[i]) >= batch) throw std::invalid_argument("select: row out of range");
  FloatBuffer h(size_t(layers_) * n * sp_), c(size_t(layers_) * n * hp_);
  for (int l = 0; l < layers_; ++l)
    for (int i = 0; i < n; ++i) {
      std::copy_n(h_.data() + (l * batch + rows[i]) * sp_, sp_, h.data() + (size_t(l) * n + i) * sp_);
      std::copy_n(c_.data() + (l * batch + rows[i]) * hp_, hp_, c.data() + (size_t(l) * n + i) * hp_);
    }
  h_.swap(h);
  c_.swap(c);
}

void LstmStack::reset() {
  h_.clear();
  c_.clear();
}

size_t LstmStack::input_weight_bytes() const {
  size_t n = 0;
  for (const Cell& c : cells_) n += c.ih.bytes();
  return n;
}

size_t LstmStack::recurrent_weight_bytes() const {
  size_t n = 0;
  for (const Cell& c : cells_) n += c.hh.bytes() + c.hr.bytes();
  return n;
}

size_t LstmStack::input_macs() const {
  size_t n = 0;
  for (const Cell& c : cells_) n += c.ih.floats;
  return n;
}

}  // namespace lrk
