// pybind11 bindings of the kernel library, kept apart from the kernels themselves.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "asr.h"
#include "char_lm.h"
#include "build_info.h"
#include "cpu_features.h"
#include "decoder.h"
#include "frontend.h"
#include "lstm.h"
#include "model_file.h"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

// One cast per argument (numpy arrays, or anything with __array__ such as CPU torch tensors),
// checked against the expected number of dimensions.
FloatArray as_floats(py::handle obj, int ndim, const std::string& where) {
  FloatArray a;
  try {
    a = FloatArray::ensure(obj);
  } catch (const py::error_already_set&) {
  }
  if (!a) throw py::type_error(where + ": expected a float array");
  if (a.ndim() != ndim) throw py::value_error(where + ": expected " + std::to_string(ndim) + " dimensions, got " +
                                              std::to_string(a.ndim()));
  return a;
}

// A model file (csrc/model_file.h) from a path (str or os.PathLike) or from its bytes.
// A file without a checksum (format version 1) loads with a warning.
lrk::ModelFile model_file(py::handle source) {
  lrk::ModelFile file = py::isinstance<py::bytes>(source)
                            ? lrk::ModelFile(source.cast<std::string>(), "<bytes>")
                            : lrk::ModelFile::open(py::str(py::module_::import("os").attr("fspath")(source)));
  if (!file.checksummed() &&
      PyErr_WarnEx(PyExc_UserWarning, (file.name() + ": format version 1 has no checksum").c_str(), 1) != 0)
    throw py::error_already_set();
  return file;
}

FloatArray frontend_features(lrk::Frontend& self, py::handle samples_obj) {
  FloatArray x = as_floats(samples_obj, 1, "features: samples");
  const int frames = self.feature_frames(int(x.shape(0)));
  if (frames == 0) throw py::value_error("features: audio shorter than one frame");
  FloatArray y({frames, self.mel_bins()});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    self.features(x.data(), int(x.shape(0)), yp);
  }
  return y;
}

FloatArray frontend_subsample(lrk::Frontend& self, py::handle feats_obj) {
  FloatArray f = as_floats(feats_obj, 2, "subsample: features");
  if (f.shape(1) != self.mel_bins()) throw py::value_error("subsample: features must have " + std::to_string(self.mel_bins()) + " bins");
  const int out = self.output_frames(int(f.shape(0)));
  if (out == 0) throw py::value_error("subsample: " + std::to_string(f.shape(0)) + " frames are too few");
  FloatArray y({out, self.output_size()});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    self.subsample(f.data(), int(f.shape(0)), yp);
  }
  return y;
}

lrk::BeamOptions beam_options(int beam, double lm_weight, double length_bonus, double length_penalty) {
  if (beam < 1) throw py::value_error("beam must be at least 1");
  lrk::BeamOptions o;
  o.beam = beam;
  o.lm_weight = lm_weight;
  o.length_bonus = length_bonus;
  o.length_penalty = length_penalty;
  return o;
}

py::dict transcribe(lrk::Asr& self, py::handle samples_obj, int beam, double lm_weight, double length_bonus,
                    double length_penalty) {
  FloatArray x = as_floats(samples_obj, 1, "transcribe: samples");
  const lrk::BeamOptions o = beam_options(beam, lm_weight, length_bonus, length_penalty);
  if (beam > 1 && lm_weight != 0 && !self.has_lm()) throw py::value_error("transcribe: lm_weight set, but the model has no LM");
  lrk::Asr::Result r;
  {
    py::gil_scoped_release nogil;
    r = self.transcribe(x.data(), int(x.shape(0)), o);
  }
  py::dict ms;
  for (int k = 0; k < 4; ++k) ms[lrk::Asr::kStages[k]] = r.ms[k];
  py::dict out;
  out["text"] = r.text;
  out["tokens"] = r.tokens;
  out["ms"] = ms;
  out["frames"] = r.frames;
  out["encoder_frames"] = r.encoder_frames;
  return out;
}

FloatArray encoder_states(const lrk::AttentionDecoder& self, py::handle enc_obj) {
  FloatArray enc = FloatArray::ensure(enc_obj);
  if (!enc || enc.ndim() != 2 || enc.shape(1) != self.enc_dim() || enc.shape(0) < 1)
    throw py::value_error("decoder: enc must be (frames >= 1, " + std::to_string(self.enc_dim()) + ")");
  return enc;
}

py::object greedy(lrk::AttentionDecoder& self, py::handle enc_obj, bool return_logp) {
  FloatArray enc = encoder_states(self, enc_obj);
  std::vector<float> logp;
  std::vector<int> tokens;
  {
    py::gil_scoped_release nogil;
    tokens = self.greedy(enc.data(), int(enc.shape(0)), return_logp ? &logp : nullptr);
  }
  if (!return_logp) return py::cast(tokens);
  FloatArray lp({py::ssize_t(logp.size() / self.vocab()), py::ssize_t(self.vocab())});
  std::copy(logp.begin(), logp.end(), lp.mutable_data());
  return py::make_tuple(tokens, lp);
}

std::vector<int> beam_search(lrk::AttentionDecoder& self, py::handle enc_obj, int beam, double lm_weight,
                             double length_bonus, double length_penalty, lrk::CharLm* lm) {
  FloatArray enc = encoder_states(self, enc_obj);
  const lrk::BeamOptions o = beam_options(beam, lm_weight, length_bonus, length_penalty);
  py::gil_scoped_release nogil;
  return self.beam(enc.data(), int(enc.shape(0)), o, lm);
}

FloatArray lm_step(lrk::CharLm& self, const std::vector<int>& tokens) {
  if (tokens.empty()) throw py::value_error("step: needs at least one token");
  FloatArray y({py::ssize_t(tokens.size()), py::ssize_t(self.vocab())});
  float* yp = y.mutable_data();
  py::gil_scoped_release nogil;
  self.step(tokens.data(), int(tokens.size()), yp);
  return y;
}

FloatArray forward(lrk::LstmStack& self, py::handle x_obj) {
  FloatArray x = FloatArray::ensure(x_obj);
  if (!x || (x.ndim() != 2 && x.ndim() != 3)) throw py::value_error("forward: x must be (frames, input) or (batch, frames, input)");
  const bool batched = x.ndim() == 3;
  const int batch = batched ? int(x.shape(0)) : 1, frames = int(x.shape(batched ? 1 : 0));
  if (x.shape(x.ndim() - 1) != self.input_size())
    throw py::value_error("forward: input size " + std::to_string(x.shape(x.ndim() - 1)) + ", the stack takes " +
                          std::to_string(self.input_size()));
  std::vector<py::ssize_t> shape = {frames, self.output_size()};
  if (batched) shape.insert(shape.begin(), batch);
  FloatArray y(shape);
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    self.forward(x.data(), batch, frames, yp);
  }
  return y;
}

// A float32 C-contiguous numpy array as it stands (no conversion, no new reference), else nullptr.
const py::detail::PyArray_Proxy* plain_floats(py::handle obj) {
  return FloatArray::check_(obj) ? py::detail::array_proxy(obj.ptr()) : nullptr;
}

py::object step(lrk::LstmStack& self, py::handle x_obj, py::object out) {
  // A streaming loop's call, one frame into the caller's buffer, is checked on the arrays' own
  // fields: each step streams megabytes of weights, which evict whatever the general conversions
  // below touch, and through them a call took ~0.6 us longer (2% of an r = 128 step).
  const auto *xa = plain_floats(x_obj), *ya = plain_floats(out);
  if (xa && ya && xa->nd == 1 && xa->dimensions[0] == self.input_size() && ya->nd == 1 &&
      ya->dimensions[0] == self.state_size() && (ya->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) {
    const float* xp = reinterpret_cast<const float*>(xa->data);
    float* yp = reinterpret_cast<float*>(ya->data);
    {
      py::gil_scoped_release nogil;
      self.step(xp, 1, yp);
    }
    return out;
  }
  FloatArray x = FloatArray::ensure(x_obj);
  if (!x || (x.ndim() != 1 && x.ndim() != 2) || x.shape(x.ndim() - 1) != self.input_size())
    throw py::value_error("step: x must be (input,) or (batch, input) with input " + std::to_string(self.input_size()));
  const int batch = x.ndim() == 2 ? int(x.shape(0)) : 1;
  FloatArray y;
  if (out.is_none()) {
    y = x.ndim() == 2 ? FloatArray({batch, self.state_size()}) : FloatArray({self.state_size()});
  } else {  // a caller's buffer, reused across calls: no allocation per frame
    y = out.cast<py::array>();
    if (!py::isinstance<FloatArray>(out) || !(y.flags() & py::array::c_style) || !y.writeable() ||
        y.size() != py::ssize_t(batch) * self.state_size())
      throw py::value_error("step: out must be a writable C-contiguous float32 array of batch x state_size values");
  }
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    self.step(x.data(), batch, yp);
  }
  return y;
}

template <void (*lrk::Kernels::*F)(const float*, float*, size_t)>
FloatArray elementwise(py::handle x_obj, const std::string& isa) {
  FloatArray x = FloatArray::ensure(x_obj);
  if (!x) throw py::type_error("expected a float array");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  FloatArray y(shape);
  (lrk::kernels(isa).*F)(x.data(), y.mutable_data(), size_t(x.size()));
  return y;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "Native low-rank LSTM kernels of the ASR compression pipeline";
  // A malformed model file is bad input, as a ValueError is in Python.
  py::register_exception<lrk::FormatError>(m, "FormatError", PyExc_ValueError);
  m.def("build_info", [] {
    const lrk::BuildInfo& b = lrk::build_info();
    py::dict d;
    d["version"] = b.version;
    d["compiler"] = b.compiler;
    d["build_type"] = b.build_type;
    d["arch"] = b.arch;
    return d;
  }, "What this extension was built with.");
  m.def("cpu_features", [] {
    const lrk::CpuFeatures& f = lrk::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512_vnni"] = f.avx512_vnni;
    d["avx512_bf16"] = f.avx512_bf16;
    d["neon"] = f.neon;
    d["dotprod"] = f.dotprod;
    return d;
  }, "SIMD features detected on this CPU at run time.");
  m.def("best_isa", &lrk::best_isa, "The SIMD path kernels will take on this CPU.");
  m.def("report_json", &lrk::report_json, "Build info and CPU features as one JSON string.");
  m.def("available_isas", &lrk::available_isas, "Kernel paths this build holds and this CPU runs, best first.");
  m.def("sigmoid", &elementwise<&lrk::Kernels::sigmoid>, py::arg("x"), py::arg("isa") = "auto",
        "The kernels' vectorised sigmoid (for checking its error).");
  m.def("tanh", &elementwise<&lrk::Kernels::tanh>, py::arg("x"), py::arg("isa") = "auto",
        "The kernels' vectorised tanh (for checking its error).");
  m.def("read_gbps", [](size_t bytes, double seconds, const std::string& isa) {
    const lrk::Kernels& k = lrk::kernels(isa);
    py::gil_scoped_release nogil;
    return k.read_gbps(bytes, seconds);
  }, py::arg("bytes"), py::arg("seconds") = 0.2, py::arg("isa") = "auto",
        "Read bandwidth (GB/s) over a buffer of `bytes`, best pass.");
  m.def("peak_gflops", [](double seconds, const std::string& isa) {
    const lrk::Kernels& k = lrk::kernels(isa);
    py::gil_scoped_release nogil;
    return k.peak_gflops(seconds);
  }, py::arg("seconds") = 0.2, py::arg("isa") = "auto", "Peak FMA throughput (GFLOP/s) of one thread.");
  py::class_<lrk::ModelFile>(m, "ModelFile", "A model file, read and checked (see csrc/model_file.h).")
      .def(py::init(&model_file), py::arg("source"), "A path, or the file's bytes.")
      .def_property_readonly("version", &lrk::ModelFile::version)
      .def_property_readonly("checksummed", &lrk::ModelFile::checksummed);

  py::class_<lrk::Frontend>(m, "Frontend", "Filterbanks, CMVN and the convolutional subsampling (see csrc/frontend.h).")
      .def(py::init([](py::handle source, const std::string& isa) {
             return new lrk::Frontend(model_file(source).frontend(), isa);
           }),
           py::arg("source"), py::arg("isa") = "auto", "The front end of a model file (a path, or its bytes).")
      .def("features", &frontend_features, py::arg("samples"),
           "16 kHz mono samples in [-1, 1] -> normalised log-mel features (frames, mel_bins).")
      .def("subsample", &frontend_subsample, py::arg("features"),
           "Features (frames, mel_bins) -> the encoder LSTM stack's input (frames', output_size).")
      .def_property_readonly("output_size", &lrk::Frontend::output_size);

  py::class_<lrk::AttentionDecoder>(m, "AttentionDecoder",
                                    "Greedy and beam-search attention decoding on packed weights (see csrc/decoder.h).")
      .def(py::init([](py::handle source, const std::string& isa) {
             const lrk::ModelFile file = model_file(source);
             const lrk::DecoderWeights weights = file.decoder();
             return new lrk::AttentionDecoder(weights, file.limits(), isa);
           }),
           py::arg("source"), py::arg("isa") = "auto",
           "The decoder and its length limits of a model file (a path, or its bytes).")
      .def("greedy", &greedy, py::arg("enc"), py::arg("return_logp") = false,
           "Encoder states (frames, enc_dim) -> output tokens (EOS excluded); with return_logp, also each "
           "step's log-probabilities (steps, vocab).")
      .def("max_steps", [](lrk::AttentionDecoder& self, py::handle enc_obj) {
             FloatArray enc = encoder_states(self, enc_obj);
             return self.max_steps(enc.data(), int(enc.shape(0)));
           }, py::arg("enc"), "The output-length cap of an utterance.")
      .def("beam", &beam_search, py::arg("enc"), py::arg("beam") = 8, py::arg("lm_weight") = 0.0,
           py::arg("length_bonus") = 0.0, py::arg("length_penalty") = 1.0, py::arg("lm") = nullptr,
           "Encoder states -> the best hypothesis of a beam search (pipeline/model/beam.py), fused with `lm`.")
      .def_property_readonly("values_per_frame", &lrk::AttentionDecoder::values_per_frame,
                             "Floats per encoder frame the context product reads at each step (see csrc/decoder.h).")
      .def_property_readonly("isa", &lrk::AttentionDecoder::isa);

  py::class_<lrk::Asr>(m, "Asr", "The whole model of a model file, samples to text, each stage timed (see csrc/asr.h).")
      .def(py::init([](py::handle source, const std::string& isa, py::handle lm) {
             lrk::ModelWeights w = lrk::read_model(model_file(source));
             if (!lm.is_none()) {
               w.lm = lrk::read_lm(model_file(lm));
               w.has_lm = true;
             }
             return new lrk::Asr(w, isa);
           }),
           py::arg("source"), py::arg("isa") = "auto", py::arg("lm") = py::none(),
           "The whole model of a model file (a path, or its bytes); `lm`: a language model file beside it.")
      .def("transcribe", &transcribe, py::arg("samples"), py::arg("beam") = 1, py::arg("lm_weight") = 0.0,
           py::arg("length_bonus") = 0.0, py::arg("length_penalty") = 1.0,
           "16 kHz mono samples in [-1, 1] -> {text, tokens, ms (per stage), frames, encoder_frames}; beam 1 is "
           "greedy, above it beam search fused with the model's LM at lm_weight.")
      .def_property_readonly("has_lm", &lrk::Asr::has_lm)
      .def_property_readonly("isa", &lrk::Asr::isa);

  py::class_<lrk::CharLm>(m, "CharLm", "A character LSTM language model on packed weights (see csrc/char_lm.h).")
      .def(py::init([](py::handle source, const std::string& isa) {
             const lrk::ModelFile file = model_file(source);
             return new lrk::CharLm(file.has("encoder.cells") ? file.lm() : lrk::read_lm(file), isa);
           }),
           py::arg("source"), py::arg("isa") = "auto", "The LM (lm.* entries) of a model file (a path, or its bytes).")
      .def("step", &lm_step, py::arg("tokens"),
           "Feeds each row its token -> log-probabilities (rows, vocab); the state carries to the next call.")
      .def("select", [](lrk::CharLm& self, const std::vector<int>& rows) {
             self.select(rows.data(), int(rows.size()));
           }, py::arg("rows"), "Keeps these rows of the state, in this order, as the new rows.")
      .def("reset", &lrk::CharLm::reset)
      .def_property_readonly("vocab", &lrk::CharLm::vocab)
      .def_property_readonly("isa", &lrk::CharLm::isa);

  py::class_<lrk::LstmStack>(m, "LstmStack", "An LSTM stack on packed weights (see csrc/lstm.h).")
      .def(py::init([](py::handle source, const std::string& prefix, const std::string& isa) {
             return new lrk::LstmStack(model_file(source).stack(prefix), isa);
           }),
           py::arg("source"), py::arg("prefix") = "encoder", py::arg("isa") = "auto",
           "The stack PREFIX (`encoder`, `decoder.lstm`) of a model file (a path, or its bytes).")
      .def("forward", &forward, py::arg("x"), "A whole utterance: (frames, input) or (batch, frames, input).")
      .def("step", &step, py::arg("x"), py::arg("out") = py::none(),
           "One frame, (input,) or (batch, input); the state carries to the next call until reset().")
      .def("reset", &lrk::LstmStack::reset)
      .def_property_readonly("isa", &lrk::LstmStack::isa)
      .def_property_readonly("layers", &lrk::LstmStack::layers)
      .def_property_readonly("directions", &lrk::LstmStack::directions)
      .def_property_readonly("input_size", &lrk::LstmStack::input_size)
      .def_property_readonly("hidden_size", &lrk::LstmStack::hidden_size)
      .def_property_readonly("proj_size", &lrk::LstmStack::proj_size)
      .def_property_readonly("state_size", &lrk::LstmStack::state_size)
      .def_property_readonly("output_size", &lrk::LstmStack::output_size)
      .def_property_readonly("input_weight_bytes", &lrk::LstmStack::input_weight_bytes)
      .def_property_readonly("recurrent_weight_bytes", &lrk::LstmStack::recurrent_weight_bytes)
      .def_property_readonly("input_macs", &lrk::LstmStack::input_macs);
}
