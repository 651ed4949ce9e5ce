"""The native model file (`LRKM`, docs/formats.md) from PyTorch modules, and the C++ runtime on it.

Everything the C++ runtime loads goes through this one format: a whole model (`write_model`, what
`lowrank_bench --model` and `transcribe --native` run), an LSTM stack alone (`write_stack`, what
`lowrank_bench --weights` and the latency table time), and the in-process objects below, which are
built from the same bytes (`stack`, `decoder`, `frontend`, `NativeAsr`).

int8: every weight matrix may go into the file as int8 (NAME.q, NAME.scale: symmetric, one scale per
row), which the runtime multiplies in int8 (`int8=True`; `keep_float` globs name the matrices that
stay float)."""
import fnmatch
import struct
import zlib

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from torch import nn

from pipeline import _native
from pipeline.atomic import atomic_path
from pipeline.data.audio import SAMPLE_RATE, resample
from pipeline.data.features import FeatureConfig
from pipeline.data.vocab import BLANK, EOS, SOS, TOKENS
from pipeline.errors import PipelineError
from pipeline.lowrank.modules import LowRankLSTM, LowRankRecurrent, cell_name
from pipeline.data.vocab import decode as ids_to_text
from pipeline.model.decode import DecodeConfig
from pipeline.model.evaluate import encoder_states

# version 2 ends with the CRC-32 of every byte before it; version 3 adds int8 entries
MAGIC, VERSION = b"LRKM", 3
# Applied element by element in the attention (not as matrix products): float whatever is asked.
ALWAYS_FLOAT = ("decoder.loc", "decoder.energy")


def _array(t):
    return t.detach().to(torch.float32).contiguous().numpy()


def _ints(*values):
    return np.array(values, np.int32)


def quantize_rows(a):
    """Symmetric int8 of each row of a 2-D float array: (q, scale), q = round(a / scale) in [-127, 127]
    (halves away from zero, as the runtime rounds), scale = max |row| / 127 (0 for a zero row)."""
    a = np.asarray(a, np.float32)
    scale = (np.abs(a).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))[:, None]
    q = np.clip(np.trunc(a / safe + np.copysign(np.float32(0.5), a)), -127, 127)
    return q.astype(np.int8), scale


def int8_error(a, q, scale):
    """The relative error (Frobenius) of a matrix's int8 form."""
    norm = float(np.linalg.norm(a))
    return float(np.linalg.norm(q * scale[:, None] - a)) / norm if norm else 0.0


class Precision:
    """Which matrices a file holds in int8: all when `int8`, but those whose entry name matches a
    `keep_float` glob (and ALWAYS_FLOAT), and, by rule, any whose int8 form is further than
    `max_error` (relative, Frobenius) from its float weights: rows with a few outlying weights, whose
    scale then leaves the rest few levels. Trained matrices here sit near 1% (docs/results.md)."""

    def __init__(self, int8=False, keep_float=(), max_error=0.03):
        self.int8, self.keep_float, self.max_error = bool(int8), tuple(keep_float) + ALWAYS_FLOAT, max_error

    def __call__(self, name):
        return self.int8 and not any(fnmatch.fnmatchcase(name, g) for g in self.keep_float)


FP32 = Precision()


def _put(entries, name, parts, precision):
    """The arrays of matrix `name` (its weight {"": W}, or its factors {".U": U, ".V": V}): in int8
    where `precision` says and every part quantises within its max_error, else float."""
    if precision(name):
        quantized = {sfx: quantize_rows(a) for sfx, a in parts.items()}
        if all(int8_error(parts[sfx], *qs) <= precision.max_error for sfx, qs in quantized.items()):
            for sfx, (q, scale) in quantized.items():
                entries[name + sfx + ".q"], entries[name + sfx + ".scale"] = q, scale
            return
    entries.update({name + sfx: a for sfx, a in parts.items()})


def _matrix(entries, name, m, precision=FP32):
    """A dense weight as NAME; a factored layer (LowRankLinear, a factored cell matrix) as NAME.U, NAME.V;
    in int8 (NAME.q, NAME.scale) where `precision` says."""
    if isinstance(m, torch.Tensor):
        _put(entries, name, {"": _array(m)}, precision)
    elif getattr(m, "rank", None) is None:
        _put(entries, name, {"": _array(m.weight)}, precision)
    else:
        _put(entries, name, {".U": _array(m.U), ".V": _array(m.V)}, precision)


def _linear(entries, name, m, precision=FP32):
    _matrix(entries, name, m, precision)
    if m.bias is not None:
        entries[name + ".bias"] = _array(m.bias)


def cells_of(lstm):
    """(ih, hh, bias, hr or None) of each cell of an nn.LSTM (any proj_size and bias), a LowRankLSTM
    or the LowRankRecurrent of an nn.LSTM, layer-major; and its directions."""
    dirs = 2 if lstm.bidirectional else 1
    out = []
    for layer in range(lstm.num_layers):
        for d in range(dirs):
            if isinstance(lstm, LowRankLSTM):
                c = lstm.cells[cell_name(layer, d)]
                out.append((c.ih, c.hh, c.bias, None))
                continue
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = lstm.matrices if isinstance(lstm, LowRankRecurrent) else dict(lstm.named_parameters())
            b = lstm.biases if isinstance(lstm, LowRankRecurrent) else w
            bias = b["bias_ih" + sfx] + b["bias_hh" + sfx] if lstm.bias else torch.zeros(4 * lstm.hidden_size)
            out.append((w["weight_ih" + sfx], w["weight_hh" + sfx], bias, w["weight_hr" + sfx] if lstm.proj_size else None))
    return out, dirs


def _stack_cells(obj):
    """The cells of an nn.LSTM, a LowRankLSTM or the ASR encoder (one single-layer LSTM per direction
    and layer) as one stack; and its directions."""
    if isinstance(obj, (nn.LSTM, LowRankLSTM)) or (isinstance(obj, LowRankRecurrent) and obj.original is nn.LSTM):
        return cells_of(obj)
    if hasattr(obj, "lstms"):
        dirs = len(obj.lstms[0])
        return [c for layer in obj.lstms for d in ("fwd", "bwd")[:dirs] for c in cells_of(layer[d])[0]], dirs
    raise PipelineError(f"native LSTM: cannot take the weights of a {type(obj).__name__}")


def stack_entries(obj, prefix="encoder", precision=FP32):
    """The entries of one LSTM stack: PREFIX.directions, PREFIX.cells, PREFIX.<k>.{ih, hh, bias}, and
    PREFIX.<k>.hr for an LSTM with projections."""
    cells, dirs = _stack_cells(obj)
    entries = {prefix + ".directions": _ints(dirs), prefix + ".cells": _ints(len(cells))}
    for k, (ih, hh, bias, hr) in enumerate(cells):
        _matrix(entries, f"{prefix}.{k}.ih", ih, precision)
        _matrix(entries, f"{prefix}.{k}.hh", hh, precision)
        if hr is not None:
            _matrix(entries, f"{prefix}.{k}.hr", hr, precision)
        entries[f"{prefix}.{k}.bias"] = _array(bias)
    return entries


def decoder_entries(model, cfg=DecodeConfig(), precision=FP32):
    """The attention decoder, the CTC head (which caps the output length) and the length limits."""
    dec, att = model.decoder, model.decoder.attention
    entries = {"decoder.embedding": _array(dec.embed.weight), **stack_entries(dec.lstm, "decoder.lstm", precision),
               "decoder.loc_conv": _array(att.loc_conv.weight[:, 0])}
    for name, m in (("key", att.key), ("query", att.query), ("loc", att.loc), ("energy", att.energy),
                    ("out", dec.out), ("ctc", model.ctc)):
        _linear(entries, "decoder." + name, m, precision)
    entries["decoder.tokens"] = _ints(SOS, EOS, BLANK)
    entries["decoder.limits"] = np.array([cfg.max_len_ratio, cfg.ctc_len_ratio, cfg.ctc_len_margin, 8], np.float32)
    return entries


def frontend_entries(model, cmvn, cfg=FeatureConfig()):
    """features.py's Kaldi filterbanks, the CMVN and the model's convolutional subsampling."""
    length, shift = (int(SAMPLE_RATE * ms / 1000) for ms in (cfg.frame_length_ms, cfg.frame_shift_ms))
    fft = 1 << (length - 1).bit_length()  # kaldi.fbank rounds the window to a power of two
    # kaldi.fbank's defaults: povey window, mel banks from 20 Hz to Nyquist, then a zero Nyquist column
    window = torch.hann_window(length, periodic=False, dtype=torch.float32).pow(0.85)
    mel = torch.nn.functional.pad(kaldi.get_mel_banks(cfg.num_mel_bins, fft, float(SAMPLE_RATE), 20.0, 0.0, 100.0,
                                                      -500.0, 1.0)[0], (0, 1))
    sub = model.encoder.subsample
    conv1, conv2 = sub.conv[0], sub.conv[2]
    return {"frontend.window": _array(window), "frontend.mel": _array(mel), "frontend.mean": _array(cmvn.mean),
            "frontend.std": _array(cmvn.std), "frontend.conv1_w": _array(conv1.weight).reshape(-1),
            "frontend.conv1_b": _array(conv1.bias), "frontend.conv2_w": _array(conv2.weight).reshape(-1),
            "frontend.conv2_b": _array(conv2.bias),
            "frontend.ints": _ints(length, shift, fft, conv1.out_channels, sub.t2),
            "frontend.sample_rate": _ints(SAMPLE_RATE),
            "frontend.preemphasis": np.array([0.97], np.float32)}


def lm_entries(lm, precision=FP32):
    """A character LM (pipeline/model/lm.py): lm.embedding, the stack lm.lstm and lm.out."""
    entries = {"lm.embedding": _array(lm.embed.weight), **stack_entries(lm.lstm, "lm.lstm", precision)}
    _linear(entries, "lm.out", lm.out, precision)
    return entries


def model_entries(model, cmvn, cfg=DecodeConfig(), precision=FP32, lm=None):
    """The whole recogniser: front end, encoder stack, decoder and vocabulary; and `lm` if given."""
    return {**frontend_entries(model, cmvn), **stack_entries(model.encoder, precision=precision),
            **decoder_entries(model, cfg, precision),
            "vocab": _ints(*(ord(t) if len(t) == 1 else 0 for t in TOKENS)),
            **(lm_entries(lm, precision) if lm is not None else {})}


TYPES = {np.dtype(np.int32): b"i", np.dtype(np.int8): b"b"}


def encode(entries):
    """The bytes of a model file holding `entries` (name -> float32, int32 or int8 array)."""
    out = [MAGIC, struct.pack("<II", VERSION, len(entries))]
    for name, a in entries.items():
        a = np.ascontiguousarray(a, a.dtype if a.dtype in TYPES else np.float32)
        out += [struct.pack("<I", len(name)), name.encode(), TYPES.get(a.dtype, b"f"),
                struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape), a.astype("<" + a.dtype.str[1:]).tobytes()]
    body = b"".join(out)
    return body + struct.pack("<I", zlib.crc32(body))


def write(path, entries):
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode(entries))


def write_model(path, model, cmvn, cfg=DecodeConfig(), precision=FP32, lm=None):
    """The whole model in the file `lowrank_bench --model` and `transcribe --native` run; with `lm`
    (a CharLM) inside it for beam search with shallow fusion."""
    write(path, model_entries(model, cmvn, cfg, precision, lm))


def write_lm(path, lm, precision=FP32):
    """A character LM alone, for `lowrank_bench --model M --lm PATH`."""
    write(path, lm_entries(lm, precision))


def native_lm(lm, isa="auto", precision=FP32):
    """A native `CharLm` of a CharLM (dense or factored)."""
    return _native.CharLm(encode(lm_entries(lm, precision)), isa)


def write_stack(path, obj, precision=FP32):
    """An LSTM stack alone (nn.LSTM, LowRankLSTM or the ASR encoder), for `lowrank_bench --weights`."""
    write(path, stack_entries(obj, precision=precision))


def stack(obj, isa="auto", precision=FP32):
    """A native `LstmStack` of an nn.LSTM, a LowRankLSTM or the ASR encoder (weights packed once)."""
    return _native.LstmStack(encode(stack_entries(obj, precision=precision)), "encoder", isa)


def decoder(model, cfg=DecodeConfig(), isa="auto"):
    """A native `AttentionDecoder` of the model's decoder."""
    return _native.AttentionDecoder(encode(decoder_entries(model, cfg)), isa)


def frontend(model, cmvn, cfg=FeatureConfig(), isa="auto"):
    """A native `Frontend`: filterbanks, CMVN and the model's subsampling."""
    return _native.Frontend(encode(frontend_entries(model, cmvn, cfg)), isa)


def beam_rows(model, cmvn, rows, cfg, lm=None, isa="auto", progress=True, states=None):
    """Transcripts of manifest rows by the native decoder's beam search (fused with `lm`, a CharLM, at
    cfg.lm_weight) on PyTorch's encoder states: what `transcribe --native` decodes, at a fraction of
    PyTorch's per-hypothesis cost, for scoring whole splits. states: the rows' encoder states
    [(row index, (1, T', D))] where already computed (a grid of settings encodes once)."""
    dec = decoder(model, cfg, isa)
    nlm = native_lm(lm, isa) if lm is not None and cfg.lm_weight else None
    hyps = [None] * len(rows)
    for i, enc in states if states is not None else encoder_states(model, cmvn, rows, progress=progress):
        tokens = dec.beam(enc[0].numpy(), cfg.beam, cfg.lm_weight if nlm else 0.0, cfg.length_bonus,
                          cfg.length_penalty, nlm)
        hyps[i] = ids_to_text(tokens)
    return hyps


@torch.no_grad()
def encode_native(model, feats, native_stack=None):
    """Encoder states (T', D) of one utterance's features (T, n_mels): the convolutional subsampling
    in PyTorch, the LSTM stack in C++."""
    enc = model.encoder
    x, _ = enc.subsample(feats.unsqueeze(0), torch.tensor([feats.shape[0]]))
    native_stack = native_stack or stack(enc)
    return torch.from_numpy(native_stack.forward(np.ascontiguousarray(x[0].numpy())))


class NativeAsr:
    """A checkpoint in C++ from samples to transcript, as `lowrank_bench --model` runs it (lrk::Asr on
    the model file's bytes): `transcribe(audio, sr)`; `run(samples)` also gives the tokens and each
    stage's milliseconds. Greedy, or by beam search (cfg.beam > 1) fused with `lm` at cfg.lm_weight."""

    def __init__(self, model, cmvn, cfg=DecodeConfig(), isa="auto", precision=FP32, lm=None):
        self.asr = _native.Asr(encode(model_entries(model, cmvn, cfg, precision, lm)), isa)
        self.cfg = cfg

    def run(self, samples):
        """16 kHz float32 samples -> {text, tokens, ms (per stage), frames, encoder_frames}."""
        c = self.cfg
        if c.ctc_weight > 0 and c.beam > 1:
            raise PipelineError("the native runtime has no CTC rescoring: decode with ctc_weight 0")
        return self.asr.transcribe(samples, c.beam, c.lm_weight if self.asr.has_lm else 0.0, c.length_bonus,
                                   c.length_penalty)

    def transcribe(self, audio, sr=SAMPLE_RATE):
        return self.run(np.ascontiguousarray(resample(np.asarray(audio, dtype=np.float32), sr)))["text"]
