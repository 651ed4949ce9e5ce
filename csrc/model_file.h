// A whole model in one file, for a device without Python: the front end, the encoder's LSTM stack
// and the attention decoder, as named arrays (pipeline/native.py writes it).
//
// File (little-endian): "LRKM", u32 version, u32 count, then `count` entries: u32 name length, the
// name, u8 type ('f' float32 or 'i' int32), u32 ndim, u32 dims[ndim], the values; nothing after.
// A factored matrix NAME is two entries NAME.U and NAME.V; a dense one is NAME. The names:
//   frontend.{window, mel, mean, std, conv1_w, conv1_b, conv2_w, conv2_b} (f), frontend.ints (i:
//   frame_length, frame_shift, fft_size, channels, time_stride), frontend.preemphasis (f, 1 value);
//   encoder.directions (i), encoder.cells (i: count), encoder.<k>.{ih, hh, bias} (layer-major);
//   decoder.embedding, decoder.lstm.cells (i), decoder.lstm.<k>.{ih, hh, bias}, decoder.{key, query,
//   loc, energy, out, ctc} with .bias where they have one, decoder.loc_conv (f), decoder.tokens (i:
//   sos, eos, blank), decoder.limits (f: max_len_ratio, ctc_len_ratio, ctc_len_margin, min_len);
//   vocab (i: one Unicode code point per token, 0 for a token that prints nothing).
#pragma once
#include <string>
#include <vector>

#include "decoder.h"
#include "frontend.h"
#include "lstm_weights.h"

namespace lrk {

constexpr unsigned kModelVersion = 1;

struct ModelWeights {
  FrontendWeights frontend;
  StackWeights encoder;
  DecoderWeights decoder;
  DecodeLimits limits;
  std::vector<int> vocab;  // code point per token; 0: prints nothing
};

// Throws std::runtime_error naming the file and the entry that is missing, malformed or inconsistent.
ModelWeights read_model(const std::string& path);

}  // namespace lrk
