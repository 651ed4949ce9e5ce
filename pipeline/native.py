"""The C++ kernels (`pipeline._native`) on PyTorch modules: a dense or factored checkpoint runs
natively from samples to transcript (`NativeAsr`: filterbanks, CMVN and the convolutional
subsampling, the encoder's LSTM stack, the greedy attention decoder); the encoder's weights, or the
whole model, go to a file that `lowrank_bench` reads on a device."""
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import _native
from pipeline.atomic import atomic_path
from pipeline.data.audio import SAMPLE_RATE, resample
from pipeline.data.features import FeatureConfig
from pipeline.errors import PipelineError
from pipeline.lowrank.modules import LowRankLSTM, cell_name
from pipeline.model.decode import DecodeConfig
from pipeline.model.vocab import BLANK, EOS, SOS, TOKENS


def _array(t):
    return t.detach().to(torch.float32).contiguous().numpy()


def _matrix(m):
    """A dense weight as one array; a factored one as its (U, V) pair."""
    if isinstance(m, torch.Tensor):
        return _array(m)
    return _array(m.weight) if getattr(m, "rank", None) is None else (_array(m.U), _array(m.V))


def _linear(m):
    """An nn.Linear or LowRankLinear as the (matrix, bias or None) pair the decoder takes."""
    return _matrix(m), None if m.bias is None else _array(m.bias)


def lstm_cells(mod):
    """The cells of an nn.LSTM or LowRankLSTM, layer-major, as the kernels take them; and its directions."""
    dirs = 2 if mod.bidirectional else 1
    if getattr(mod, "proj_size", 0) or not getattr(mod, "bias", True):
        raise PipelineError("native LSTM: proj_size and bias=False are not supported")
    cells = []
    for layer in range(mod.num_layers):
        for d in range(dirs):
            if isinstance(mod, LowRankLSTM):
                c = mod.cells[cell_name(layer, d)]
                cells.append({"ih": _matrix(c.ih), "hh": _matrix(c.hh), "bias": _array(c.bias)})
            else:
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                bias = getattr(mod, "bias_ih" + sfx) + getattr(mod, "bias_hh" + sfx)
                cells.append({"ih": _matrix(getattr(mod, "weight_ih" + sfx)),
                              "hh": _matrix(getattr(mod, "weight_hh" + sfx)), "bias": _array(bias)})
    return cells, dirs


def encoder_cells(encoder):
    """The encoder's layers (one single-layer LSTM per direction each) as one stack."""
    cells, dirs = [], len(encoder.lstms[0])
    for layer in encoder.lstms:
        for d in ("fwd", "bwd")[:dirs]:
            cells += lstm_cells(layer[d])[0]
    return cells, dirs


def _cells_of(obj):
    if isinstance(obj, (nn.LSTM, LowRankLSTM)):
        return lstm_cells(obj)
    if hasattr(obj, "lstms"):
        return encoder_cells(obj)
    raise PipelineError(f"native LSTM: cannot take the weights of a {type(obj).__name__}")


def stack(obj, isa="auto"):
    """A native `LstmStack` of an nn.LSTM, a LowRankLSTM or a model's encoder (weights packed once)."""
    cells, dirs = _cells_of(obj)
    return _native.LstmStack(cells, dirs, isa)


def decoder(model, cfg=DecodeConfig(), isa="auto"):
    """A native `AttentionDecoder` of the model's decoder (and CTC head, which caps the output length)."""
    return _native.AttentionDecoder(_decoder_weights(model), isa, cfg.max_len_ratio, cfg.ctc_len_ratio,
                                    cfg.ctc_len_margin)


def _decoder_weights(model):
    dec, att = model.decoder, model.decoder.attention
    return {"embedding": _array(dec.embed.weight), "lstm": lstm_cells(dec.lstm)[0],
            "key": _linear(att.key), "query": _linear(att.query), "loc_conv": _array(att.loc_conv.weight[:, 0]),
            "loc": _linear(att.loc), "energy": _linear(att.energy), "out": _linear(dec.out),
            "ctc": _linear(model.ctc), "sos": SOS, "eos": EOS, "blank": BLANK}


def write_weights(path, obj):
    """The weights file `lowrank_bench --weights` reads (format in csrc/lstm_weights.h)."""
    cells, dirs = _cells_of(obj)
    _native.write_weights(str(path), cells, dirs)


@torch.no_grad()
def encode_native(model, feats, native_stack=None):
    """Encoder states (T', D) of one utterance's features (T, n_mels): the convolutional subsampling
    in PyTorch, the LSTM stack in C++."""
    enc = model.encoder
    x, _ = enc.subsample(feats.unsqueeze(0), torch.tensor([feats.shape[0]]))
    native_stack = native_stack or stack(enc)
    return torch.from_numpy(native_stack.forward(np.ascontiguousarray(x[0].numpy())))


def frontend(model, cmvn, cfg=FeatureConfig(), isa="auto"):
    """A native `Frontend`: features.py's Kaldi filterbanks, the CMVN and the model's subsampling."""
    return _native.Frontend(_frontend_weights(model, cmvn, cfg), isa)


def _frontend_weights(model, cmvn, cfg):
    import torchaudio.compliance.kaldi as kaldi

    length, shift = (int(SAMPLE_RATE * ms / 1000) for ms in (cfg.frame_length_ms, cfg.frame_shift_ms))
    fft = 1 << (length - 1).bit_length()  # kaldi.fbank rounds the window to a power of two
    # kaldi.fbank's defaults: povey window, mel banks from 20 Hz to Nyquist, then a zero Nyquist column
    window = torch.hann_window(length, periodic=False, dtype=torch.float32).pow(0.85)
    mel = torch.nn.functional.pad(kaldi.get_mel_banks(cfg.num_mel_bins, fft, float(SAMPLE_RATE), 20.0, 0.0, 100.0,
                                                      -500.0, 1.0)[0], (0, 1))
    sub = model.encoder.subsample
    conv1, conv2 = sub.conv[0], sub.conv[2]
    return {"window": _array(window), "mel": _array(mel), "mean": _array(cmvn.mean), "std": _array(cmvn.std),
            "conv1_w": _array(conv1.weight).reshape(-1), "conv1_b": _array(conv1.bias),
            "conv2_w": _array(conv2.weight).reshape(-1), "conv2_b": _array(conv2.bias),
            "channels": conv1.out_channels, "time_stride": sub.t2, "frame_length": length, "frame_shift": shift,
            "fft_size": fft, "preemphasis": 0.97}


class NativeAsr:
    """A checkpoint in C++ from samples to greedy transcript, as `lowrank_bench --model` runs it
    (lrk::Asr on the model file): `transcribe(audio, sr)`; `run(samples)` also gives the tokens and
    each stage's milliseconds."""

    def __init__(self, model, cmvn, cfg=DecodeConfig(), isa="auto"):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model.lrkm"
            write_model(path, model, cmvn, cfg)
            self.asr = _native.Asr(str(path), isa)

    def run(self, samples):
        """16 kHz float32 samples -> {text, tokens, ms (per stage), frames, encoder_frames}."""
        return self.asr.transcribe(samples)

    def transcribe(self, audio, sr=SAMPLE_RATE):
        return self.run(np.ascontiguousarray(resample(np.asarray(audio, dtype=np.float32), sr)))["text"]


def write_model(path, model, cmvn, cfg=DecodeConfig()):
    """The whole model in the file `lowrank_bench --model` reads (format in csrc/model_file.h)."""
    entries = {}

    def matrix(name, m):
        if isinstance(m, tuple):
            entries[name + ".U"], entries[name + ".V"] = m
        else:
            entries[name] = m

    def cells(prefix, cell_list):
        entries[prefix + ".cells"] = np.array([len(cell_list)], np.int32)
        for k, c in enumerate(cell_list):
            matrix(f"{prefix}.{k}.ih", c["ih"])
            matrix(f"{prefix}.{k}.hh", c["hh"])
            entries[f"{prefix}.{k}.bias"] = c["bias"]

    fw = _frontend_weights(model, cmvn, FeatureConfig())
    for k in ("window", "mel", "mean", "std", "conv1_w", "conv1_b", "conv2_w", "conv2_b"):
        entries["frontend." + k] = fw[k]
    entries["frontend.ints"] = np.array([fw[k] for k in ("frame_length", "frame_shift", "fft_size", "channels",
                                                          "time_stride")], np.int32)
    entries["frontend.preemphasis"] = np.array([fw["preemphasis"]], np.float32)
    enc_cells, dirs = encoder_cells(model.encoder)
    entries["encoder.directions"] = np.array([dirs], np.int32)
    cells("encoder", enc_cells)
    dw = _decoder_weights(model)
    entries["decoder.embedding"] = dw["embedding"]
    cells("decoder.lstm", dw["lstm"])
    for k in ("key", "query", "loc", "energy", "out", "ctc"):
        matrix("decoder." + k, dw[k][0])
        if dw[k][1] is not None:
            entries[f"decoder.{k}.bias"] = dw[k][1]
    entries["decoder.loc_conv"] = dw["loc_conv"]
    entries["decoder.tokens"] = np.array([SOS, EOS, BLANK], np.int32)
    entries["decoder.limits"] = np.array([cfg.max_len_ratio, cfg.ctc_len_ratio, cfg.ctc_len_margin, 8], np.float32)
    entries["vocab"] = np.array([ord(t) if len(t) == 1 else 0 for t in TOKENS], np.int32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"LRKM" + struct.pack("<II", 1, len(entries)))
        for name, a in entries.items():
            a = np.ascontiguousarray(a, np.int32 if a.dtype == np.int32 else np.float32)
            f.write(struct.pack("<I", len(name)) + name.encode() + (b"i" if a.dtype == np.int32 else b"f"))
            f.write(struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape) + a.astype("<" + a.dtype.str[1:]).tobytes())


ROOT = Path(__file__).resolve().parent.parent


def build_programs(out_dir, toolchain=None):
    """Builds the standalone programs (`lowrank_bench`, `lrk_info`) with CMake into `out_dir`, for this
    machine or, with a CMake toolchain file, for another (e.g. cmake/aarch64-linux-gnu.cmake)."""
    out = Path(out_dir)
    cmd = ["cmake", "-S", str(ROOT), "-B", str(out), "-DLRK_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    if toolchain:
        cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={Path(toolchain).resolve()}")
    for step in (cmd, ["cmake", "--build", str(out), "--parallel", "2"]):
        res = subprocess.run(step, capture_output=True, text=True)
        if res.returncode != 0:
            raise PipelineError(f"building the native programs in {out} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return out
