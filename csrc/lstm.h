// An LSTM stack (one or two directions, dense or low-rank matrices) on packed weights.
// Whole-utterance mode projects the inputs of all frames in one GEMM, then runs the recurrence;
// streaming mode (one direction) takes one frame per call and keeps the state until reset().
// Not thread-safe: one stack per thread (it owns its scratch buffers).
#pragma once
#include <string>
#include <vector>

#include "lstm_kernels.h"
#include "lstm_weights.h"
#include "matrix.h"

namespace lrk {

class LstmStack {
 public:
  explicit LstmStack(const StackWeights& weights, const std::string& isa = "auto");

  // x (batch x frames x input) -> y (batch x frames x output_size()); sequences of equal length.
  void forward(const float* x, int batch, int frames, float* y);
  // One frame: x (batch x input) -> y (batch x state_size()); the state carries over to the next call.
  void step(const float* x, int batch, float* y);
  // As step(), with layer 0's factored input matrix (W = U V) half applied by the caller:
  // vx = x . V^T (batch x its rank). Throws if that matrix is dense.
  void step_factored(const float* vx, int batch, float* y);
  void reset();
  // Streaming state: keep rows[0..n) of the current batch, in that order (repeats allowed), as the
  // new batch of n; the next step() takes n rows. Before the first step the state is zero: no-op.
  void select(const int* rows, int n);

  int layers() const { return layers_; }
  int directions() const { return dirs_; }
  int input_size() const { return input_; }
  int hidden_size() const { return hidden_; }
  int proj_size() const { return proj_; }                    // 0: no projection
  int state_size() const { return proj_ ? proj_ : hidden_; }  // h, what each direction outputs
  int output_size() const { return dirs_ * state_size(); }
  const char* isa() const { return kern_.isa; }
  // Weight bytes streamed per frame: of the input matrices and of the recurrent ones, all cells.
  size_t input_weight_bytes() const;
  size_t recurrent_weight_bytes() const;
  // Multiply-adds per frame of the input projections (what a whole-utterance GEMM computes).
  size_t input_macs() const;

 private:
  struct Cell {
    Matrix ih, hh, hr;  // hr: the projection (P x H), rank and size 0 without one
    FloatBuffer bias;   // 4 * hp, padded like the gates
  };
  // The cell's non-linearity on its gates g (rows ldg apart), then the projection if it has one:
  // c (batch x hp) updated, h (batch x sp) = o * tanh(c), or its projection.
  void cell_out(const Cell& cell, float* g, int ldg, int batch, float* c, float* h);

  void step_impl(const float* x, int batch, float* y, bool factored);
  void run_direction(const Cell& cell, const float* x, int ldx, int batch, int frames, bool reverse, float* y,
                     int ldy);

  const Kernels& kern_;
  int layers_, dirs_, input_, hidden_, proj_, hp_, sp_;  // sp_: h's row stride (hp_, or P padded)
  std::vector<Cell> cells_;
  FloatBuffer xp_, buf_[2], h_, c_, gates_, m_;  // scratch; h_ and c_ hold the streaming state
  Scratch tmp_;
};

}  // namespace lrk
