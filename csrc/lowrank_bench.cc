// lowrank_bench: latency of an LSTM stack, or of the whole model, on this device, without Python
// (what a phone or board runs).
//
//   lowrank_bench (--weights FILE [--stack NAME] | --synthetic L,DIRS,IN,H,RANK_IH,RANK_HH) [--mode utterance|stream]
//                 [--frames N] [--batch B] [--reps N] [--warmup N] [--isa NAME] [--input FILE] [--dump FILE]
//                 [--roofline BYTES] [--precision file|fp32|int8]
//   lowrank_bench --model FILE.lrkm (--audio FILE.wav | --raw-audio FILE.f32) [--reps N] [--warmup N] [--isa NAME]
//                 [--precision file|fp32|int8] [--beam N [--lm FILE.lrkm] [--lm-weight W] [--length-bonus B]
//                 [--length-penalty P]]
//
// --precision: file (default) applies each matrix as the model file holds it (float, or int8 where
// it holds NAME.q); int8 quantises every matrix (per row) when packing it, fp32 runs every one in float.
// --weights takes a model file (csrc/model_file.h) and runs one LSTM stack of it: `encoder` (a
// whole recogniser's, or a file that holds that stack alone) or the one --stack names (a stack of
// any model, under its module path). Prints one JSON object. A stack: per-frame latency statistics (us), the weight bytes streamed per
// frame, and the build and CPU report; --input reads batch x frames x input float32 values (else a
// fixed pseudo-random input); --dump writes the outputs of the last run as float32; rank 0 means
// dense; --roofline also measures read bandwidth over a buffer of BYTES, the peak FMA rate and the
// peak int8 multiply-add rate.
// A model (csrc/model_file.h) on one utterance (a 16 kHz mono 16-bit PCM .wav file, or with
// --raw-audio little-endian float32 samples at 16 kHz): the transcript and the milliseconds of each
// stage and in all. --beam above 1 decodes by beam search, fused at --lm-weight with the model file's
// character LM or the one --lm names (pipeline/model/beam.py); 1 (default) is greedy.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>
#include <time.h>

#include "asr.h"
#include "audio_file.h"
#include "build_info.h"
#include "file_bytes.h"
#include "lstm.h"

namespace {

double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

std::vector<float> uniform(size_t n, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

lrk::StackWeights synthetic(const std::string& spec) {
  int l = 0, dirs = 0, in = 0, h = 0, r_ih = 0, r_hh = 0;
  if (std::sscanf(spec.c_str(), "%d,%d,%d,%d,%d,%d", &l, &dirs, &in, &h, &r_ih, &r_hh) != 6)
    throw std::invalid_argument("--synthetic wants L,DIRS,IN,H,RANK_IH,RANK_HH, got '" + spec + "'");
  std::mt19937 rng(0);
  lrk::StackWeights s;
  s.layers = l;
  s.directions = dirs;
  const float scale = 1.0f / std::sqrt(float(h > 0 ? h : 1));
  auto matrix = [&](int rows, int cols, int rank) {
    lrk::MatrixWeights m;
    m.rows = rows;
    m.cols = cols;
    m.rank = rank;
    if (rank == 0) m.w = uniform(size_t(rows) * cols, scale, rng);
    else {
      m.u = uniform(size_t(rows) * rank, std::sqrt(scale), rng);
      m.v = uniform(size_t(rank) * cols, std::sqrt(scale), rng);
    }
    return m;
  };
  for (int i = 0; i < l; ++i)
    for (int d = 0; d < dirs; ++d) {
      lrk::CellWeights c;
      c.input = i == 0 ? in : dirs * h;
      c.hidden = h;
      c.ih = matrix(4 * h, c.input, r_ih);
      c.hh = matrix(4 * h, h, r_hh);
      c.bias = uniform(size_t(4) * h, scale, rng);
      s.cells.push_back(std::move(c));
    }
  return s;
}

struct Args {
  std::string weights, stack = "encoder", synthetic, model, audio, raw_audio, mode = "utterance", isa = "auto", input,
      dump, precision = "file", lm;
  int frames = 200, batch = 1, reps = 30, warmup = 3;
  lrk::BeamOptions beam{1};
  long roofline = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + k);
    const std::string v = argv[++i];
    if (k == "--weights") a.weights = v;
    else if (k == "--stack") a.stack = v;
    else if (k == "--synthetic") a.synthetic = v;
    else if (k == "--model") a.model = v;
    else if (k == "--audio") a.audio = v;
    else if (k == "--raw-audio") a.raw_audio = v;
    else if (k == "--mode") a.mode = v;
    else if (k == "--isa") a.isa = v;
    else if (k == "--input") a.input = v;
    else if (k == "--dump") a.dump = v;
    else if (k == "--precision") a.precision = v;
    else if (k == "--frames") a.frames = std::atoi(v.c_str());
    else if (k == "--batch") a.batch = std::atoi(v.c_str());
    else if (k == "--reps") a.reps = std::atoi(v.c_str());
    else if (k == "--warmup") a.warmup = std::atoi(v.c_str());
    else if (k == "--roofline") a.roofline = std::atol(v.c_str());
    else if (k == "--beam") a.beam.beam = std::atoi(v.c_str());
    else if (k == "--lm") a.lm = v;
    else if (k == "--lm-weight") a.beam.lm_weight = std::atof(v.c_str());
    else if (k == "--length-bonus") a.beam.length_bonus = std::atof(v.c_str());
    else if (k == "--length-penalty") a.beam.length_penalty = std::atof(v.c_str());
    else throw std::invalid_argument("unknown option " + k);
  }
  if (int(!a.weights.empty()) + int(!a.synthetic.empty()) + int(!a.model.empty()) != 1)
    throw std::invalid_argument("give exactly one of --weights, --synthetic, --model");
  if (!a.audio.empty() && !a.raw_audio.empty()) throw std::invalid_argument("give --audio or --raw-audio, not both");
  if (a.model.empty() != (a.audio.empty() && a.raw_audio.empty()))
    throw std::invalid_argument("--model goes with --audio (a wav file) or --raw-audio (float32 samples)");
  if (a.mode != "utterance" && a.mode != "stream") throw std::invalid_argument("--mode is utterance or stream");
  if (a.precision != "file" && a.precision != "fp32" && a.precision != "int8")
    throw std::invalid_argument("--precision is file, fp32 or int8");
  if (a.beam.beam < 1 || a.beam.beam > 1000) throw std::invalid_argument("--beam must be in [1, 1000]");
  for (double v : {a.beam.lm_weight, a.beam.length_bonus, a.beam.length_penalty})
    if (!std::isfinite(v) || std::fabs(v) > 100)
      throw std::invalid_argument("--lm-weight, --length-bonus and --length-penalty must be finite, within +-100");
  if (!a.lm.empty() && a.model.empty()) throw std::invalid_argument("--lm goes with --model");
  if (a.frames < 1 || a.batch < 1 || a.reps < 1 || a.warmup < 0)
    throw std::invalid_argument("--frames, --batch and --reps must be >= 1, --warmup >= 0");
  return a;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))];
}

// JSON string contents: quotes, backslashes and control characters escaped.
std::string json_escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

// A model file; one without a checksum (format version 1) still loads, with a warning.
lrk::ModelFile open_model(const std::string& path) {
  lrk::ModelFile file = lrk::ModelFile::open(path);
  if (!file.checksummed()) std::fprintf(stderr, "lowrank_bench: warning: %s: format version 1 has no checksum\n", path.c_str());
  return file;
}

// The whole model on one utterance: the transcript of the last run and median stage times.
int run_model(const Args& a) {
  lrk::ModelWeights weights = lrk::read_model(open_model(a.model));
  if (!a.lm.empty()) {
    weights.lm = lrk::read_lm(open_model(a.lm));
    weights.has_lm = true;
  }
  if (a.beam.beam > 1 && a.beam.lm_weight != 0 && !weights.has_lm)
    throw std::invalid_argument("--lm-weight: the model file holds no LM; name one with --lm");
  if (a.precision != "file") lrk::set_int8(weights, a.precision == "int8");
  lrk::Asr asr(weights, a.isa);
  const std::string path = a.audio.empty() ? a.raw_audio : a.audio;
  const std::string bytes = lrk::read_bytes(path);
  const std::vector<float> audio = a.audio.empty() ? lrk::parse_raw_f32(bytes, path) : lrk::parse_wav(bytes, path);
  lrk::Asr::Result r;
  for (int i = 0; i < a.warmup; ++i) r = asr.transcribe(audio.data(), int(audio.size()), a.beam);
  std::vector<std::vector<double>> ms(5);
  for (int i = 0; i < a.reps; ++i) {
    r = asr.transcribe(audio.data(), int(audio.size()), a.beam);
    double total = 0;
    for (int s = 0; s < 4; ++s) {
      ms[s].push_back(r.ms[s]);
      total += r.ms[s];
    }
    ms[4].push_back(total);
  }
  const std::string text = json_escaped(r.text);
  const double seconds = double(audio.size()) / 16000.0;
  std::printf("{\"mode\": \"model\", \"isa\": \"%s\", \"precision\": \"%s\", \"beam\": %d, \"lm_weight\": %g, "
              "\"length_bonus\": %g, \"length_penalty\": %g, \"lm\": %s, ", asr.isa(), a.precision.c_str(), a.beam.beam,
              a.beam.lm_weight, a.beam.length_bonus, a.beam.length_penalty, asr.has_lm() ? "true" : "false");
  std::printf("\"reps\": %d, \"text\": \"%s\", \"samples\": %zu, "
              "\"audio_seconds\": %.4f, \"frames\": %d, \"encoder_frames\": %d, \"output_tokens\": %zu, \"ms\": {",
              a.reps, text.c_str(), audio.size(), seconds, r.frames, r.encoder_frames, r.tokens.size());
  for (int s = 0; s < 4; ++s) std::printf("\"%s\": %.3f, ", lrk::Asr::kStages[s], percentile(ms[s], 0.5));
  std::printf("\"total\": %.3f}, \"total_ms\": {\"median\": %.3f, \"p90\": %.3f, \"min\": %.3f}, \"rtf\": %.5f",
              percentile(ms[4], 0.5), percentile(ms[4], 0.5), percentile(ms[4], 0.9), percentile(ms[4], 0.0),
              percentile(ms[4], 0.5) / 1e3 / seconds);
  std::printf(", \"build\": %s}\n", lrk::report_json().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    if (!a.model.empty()) return run_model(a);
    lrk::StackWeights weights = a.weights.empty() ? synthetic(a.synthetic) : open_model(a.weights).stack(a.stack);
    if (a.precision != "file") weights.set_int8(a.precision == "int8");
    lrk::LstmStack stack(weights, a.isa);
    const size_t n_in = size_t(a.batch) * a.frames * stack.input_size();
    std::vector<float> x(n_in);
    if (!a.input.empty()) {
      x = lrk::parse_raw_f32(lrk::read_bytes(a.input), a.input);
      if (x.size() < n_in) throw std::runtime_error(a.input + ": needs " + std::to_string(n_in) + " float32 values");
      x.resize(n_in);
    } else {
      std::mt19937 rng(1);
      x = uniform(n_in, 1.0f, rng);
    }
    const bool stream = a.mode == "stream";
    const int out = stream ? stack.state_size() : stack.output_size();
    std::vector<float> y(size_t(a.batch) * a.frames * out);
    std::vector<float> frame_in(size_t(a.batch) * stack.input_size());
    auto run = [&] {
      if (!stream) return stack.forward(x.data(), a.batch, a.frames, y.data());
      stack.reset();
      for (int t = 0; t < a.frames; ++t) {  // frame t of every sequence, one call per frame
        for (int b = 0; b < a.batch; ++b)
          std::copy_n(x.data() + (size_t(b) * a.frames + t) * stack.input_size(), stack.input_size(),
                      frame_in.data() + size_t(b) * stack.input_size());
        stack.step(frame_in.data(), a.batch, y.data() + size_t(t) * a.batch * out);
      }
    };
    for (int i = 0; i < a.warmup; ++i) run();
    std::vector<double> us;
    for (int i = 0; i < a.reps; ++i) {
      const double t0 = now();
      run();
      us.push_back((now() - t0) * 1e6 / a.frames);
    }
    if (!a.dump.empty()) {
      std::ofstream f(a.dump, std::ios::binary);
      f.write(reinterpret_cast<const char*>(y.data()), std::streamsize(y.size() * 4));
      if (!f) throw std::runtime_error(a.dump + ": cannot write");
    }
    double mean = 0;
    for (double v : us) mean += v / us.size();
    std::printf("{\"mode\": \"%s\", \"isa\": \"%s\", \"precision\": \"%s\", \"frames\": %d, \"batch\": %d, \"reps\": %d, "
                "\"layers\": %d, \"directions\": %d, \"input\": %d, \"hidden\": %d, "
                "\"input_weight_bytes\": %zu, \"recurrent_weight_bytes\": %zu, \"input_macs\": %zu, "
                "\"us_per_frame\": {\"median\": %.3f, \"p90\": %.3f, \"min\": %.3f, \"mean\": %.3f}",
                a.mode.c_str(), stack.isa(), a.precision.c_str(), a.frames, a.batch, a.reps, stack.layers(), stack.directions(),
                stack.input_size(), stack.hidden_size(), stack.input_weight_bytes(), stack.recurrent_weight_bytes(),
                stack.input_macs(), percentile(us, 0.5), percentile(us, 0.9), percentile(us, 0.0), mean);
    if (a.roofline > 0) {
      const lrk::Kernels& k = lrk::kernels(a.isa);
      std::printf(", \"roofline\": {\"bytes\": %ld, \"read_gbps\": %.2f, \"peak_gflops\": %.2f, "
                  "\"peak_int8_gmacs\": %.2f}", a.roofline, k.read_gbps(size_t(a.roofline), 0.2), k.peak_gflops(0.2),
                  k.peak_i8_gmacs(0.2));
    }
    std::printf(", \"build\": %s}\n", lrk::report_json().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowrank_bench: %s\n", e.what());
    return 2;
  }
}
