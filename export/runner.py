"""The onnxruntime-only runner of an exported model: what a mobile app follows. It imports no torch.

    asr = OnnxAsr("DIR")                      # DIR written by `python -m pipeline export`
    asr.transcribe_file("utt.wav", beam=5)
    asr.transcribe_file("utt.wav", beam=8, lm_weight=0.5, length_bonus=1.0)  # exported with --lm

Features are Kaldi-compatible 80-dim log-mel filterbanks (25 ms / 10 ms, povey window, pre-emphasis
0.97, DC removal, 512-point FFT, no dither), computed here in numpy; CMVN is inside encoder.onnx.
"""
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

from pipeline.errors import PipelineError
from pipeline.model.beam import BeamConfig, beam_search

FORMAT_VERSION = 1
SOS, EOS, BLANK = 1, 2, 0


class ExportError(PipelineError):
    """A missing, foreign or mismatched file in an export directory (names the file and field)."""


# ---- features ----------------------------------------------------------------------------------

def _mel(f):
    return 1127.0 * np.log(1.0 + f / 700.0)


def _mel_banks(num_bins, n_fft, sr, low=20.0):
    """Kaldi's triangular mel filters on the FFT bins (as torchaudio.compliance.kaldi builds them)."""
    mel_lo, mel_hi = _mel(low), _mel(0.5 * sr)
    delta = (mel_hi - mel_lo) / (num_bins + 1)
    b = np.arange(num_bins)[:, None]
    left, center, right = mel_lo + b * delta, mel_lo + (b + 1) * delta, mel_lo + (b + 2) * delta
    mel = _mel(sr / n_fft * np.arange(n_fft // 2))[None, :]
    banks = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1)))  # the Nyquist bin gets no weight


def resample(x, orig, new, zeros=6, rolloff=0.99):
    """Band-limited (Hann-windowed sinc) resampling, the same filter as torchaudio.functional.resample."""
    g = math.gcd(int(orig), int(new))
    o, n = int(orig) // g, int(new) // g
    base = min(o, n) * rolloff
    width = math.ceil(zeros * o / base)
    t = (np.arange(0, -n, -1) / n)[:, None] + (np.arange(-width, width + o) / o)[None, :]
    t = np.clip(t * base, -zeros, zeros)
    window = np.cos(t * np.pi / zeros / 2) ** 2
    t = t * np.pi
    kernel = (np.where(t == 0, 1.0, np.sin(t) / np.where(t == 0, 1.0, t)) * window * base / o).astype(np.float32)
    padded = np.pad(np.asarray(x, np.float32), (width, width + o))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::o]
    return (frames @ kernel.T).reshape(-1)[: math.ceil(n * len(x) / o)]


def fbank(audio, sr=16000, num_mel_bins=80, frame_length_ms=25.0, frame_shift_ms=10.0):
    """(frames, num_mel_bins) float32 log-mel features of mono float samples at any rate (resampled
    to 16 kHz)."""
    if sr != 16000:
        audio, sr = resample(audio, sr, 16000), 16000
    x = np.asarray(audio, dtype=np.float64) * 32768.0
    win, hop = int(sr * frame_length_ms / 1000), int(sr * frame_shift_ms / 1000)
    if len(x) < win:
        raise ExportError(f"audio too short for one {frame_length_ms:g} ms frame ({len(x)} samples)")
    n = 1 + (len(x) - win) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n].copy()
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= 0.97 * frames[:, :-1].copy()
    frames[:, 0] -= 0.97 * frames[:, 0]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))) ** 0.85
    n_fft = 1 << (win - 1).bit_length()
    power = np.abs(np.fft.rfft(frames * window, n=n_fft)) ** 2
    mel = power @ _mel_banks(num_mel_bins, n_fft, sr).T
    return np.log(np.maximum(mel, np.finfo(np.float32).eps)).astype(np.float32)


# ---- the model ---------------------------------------------------------------------------------

class OnnxAsr:
    """Encoder and decoder-step sessions of an export directory. `variant` picks the files:
    "fp32" (default), "int8", "ort" or "int8_ort"."""

    def __init__(self, directory, variant="fp32", threads=1):
        self.dir = Path(directory)
        self.meta = _read_meta(self.dir)
        files = self.meta["files"]
        keys = {"fp32": ("encoder", "decoder_step"), "int8": ("encoder_int8", "decoder_step_int8"),
                "ort": ("encoder_ort", "decoder_step_ort"), "int8_ort": ("encoder_int8_ort", "decoder_step_int8_ort")}
        if variant not in keys:
            raise ExportError(f"variant {variant!r}: choose one of {', '.join(keys)}")
        missing = [k for k in keys[variant] if k not in files]
        if missing:
            raise ExportError(f"{self.dir / 'model.json'}: field 'files' has no {missing[0]} (export with "
                              f"{'--int8' if 'int8' in variant else ''} {'--ort' if 'ort' in variant else ''})")
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3
        self.encoder, self.step = (self._session(files[k], so) for k in keys[variant])
        lm_key = "lm_step_int8" if "int8" in variant else "lm_step"  # the ORT-format variants too run the .onnx LM
        self.lm = self._session(files[lm_key], so) if lm_key in files and "lm" in self.meta else None
        self.vocab = self.meta["vocab"]
        cfg = self.meta["model_config"]
        self.dec_layers, self.dec_hidden = cfg["dec_layers"], cfg["dec_hidden"]

    def _session(self, name, so):
        path = self.dir / name
        if not path.is_file():
            raise ExportError(f"{path}: file named in model.json is missing")
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for foreign or broken files
            raise ExportError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        got = sess.get_modelmeta().custom_metadata_map.get("model_id")
        if got != self.meta["model_id"]:
            raise ExportError(f"{path}: metadata field 'model_id' is {got!r}, model.json says "
                              f"{self.meta['model_id'][:16]}...: the file comes from another export")
        return sess

    def encode(self, feats):
        """Raw log-mel features (T, n_mels) -> encoder states (T', D), keys (T', A), CTC log-probs (T', V)."""
        enc, keys, ctc = self.encoder.run(None, {"feats": feats[None].astype(np.float32)})
        return enc, keys, ctc

    def _init(self, enc):
        h = np.zeros((self.dec_layers, 1, self.dec_hidden), np.float32)
        t = enc.shape[1]
        return (h, h.copy(), np.zeros((1, enc.shape[2]), np.float32), np.full((1, t), 1.0 / t, np.float32))

    def _step(self, token, state, enc, keys):
        h, c, ctx, w = state
        logp, h, c, ctx, w = self.step.run(None, {"token": np.array([token], np.int64), "h": h, "c": c,
                                                  "context": ctx, "weights": w, "enc": enc, "keys": keys})
        return logp[0], (h, c, ctx, w)

    def max_steps(self, enc, ctc, max_len_ratio=1.5, ctc_len_ratio=1.5, ctc_len_margin=5):
        """The PyTorch decoder's cap on output characters (`pipeline.model.decode.max_steps`)."""
        cap = max(8, int(enc.shape[1] * max_len_ratio))
        if ctc_len_ratio > 0:
            cap = min(cap, int(len(self.ctc_path(ctc)) * ctc_len_ratio) + ctc_len_margin)
        return cap

    def greedy(self, enc, keys, cap):
        state, token, out = self._init(enc), SOS, []
        for _ in range(cap):
            logp, state = self._step(token, state, enc, keys)
            token = int(logp.argmax())
            if token == EOS:
                break
            out.append(token)
        return self.text(out)

    def beam(self, enc, keys, cap, cfg=BeamConfig(beam=5)):
        """Beam search (pipeline/model/beam.py), fused with the exported LM at cfg.lm_weight (if any)."""
        if cfg.lm_weight and self.lm is None:
            raise ExportError(f"{self.dir / 'model.json'}: no language model in this export (export with --lm)")
        lm = _LmSteps(self.lm, self.meta["lm"]) if cfg.lm_weight else None
        return self.text(beam_search(_DecoderSteps(self, enc, keys), cap, cfg, SOS, EOS, lm))

    def ctc_path(self, ctc):
        """Best path of the CTC head: the most likely token per frame, repeats merged, blanks dropped."""
        best = ctc[0].argmax(-1).tolist()
        return [t for i, t in enumerate(best) if t != BLANK and (i == 0 or t != best[i - 1])]

    def text(self, ids):
        return "".join(self.vocab[i] for i in ids if i > EOS)

    def transcribe(self, audio, sr=16000, beam=1, decoder="attention", **fusion):
        """fusion: BeamConfig's lm_weight, length_bonus, length_penalty (beam > 1)."""
        enc, keys, ctc = self.encode(fbank(audio, sr))
        if decoder == "ctc":  # no decoder graph runs
            return self.text(self.ctc_path(ctc))
        cap = self.max_steps(enc, ctc)
        return self.greedy(enc, keys, cap) if beam <= 1 else self.beam(enc, keys, cap, BeamConfig(beam, **fusion))

    def transcribe_file(self, path, beam=1, decoder="attention", **fusion):
        try:
            audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as e:
            raise ExportError(f"{path}: unreadable audio ({e})") from None
        return self.transcribe(audio.mean(axis=1), sr, beam, decoder, **fusion)


class _DecoderSteps:
    """The decoder-step graph as beam.py's step object: one call per live hypothesis (the graph
    takes one)."""

    def __init__(self, asr, enc, keys):
        self.asr, self.enc, self.keys, self.states = asr, enc, keys, [asr._init(enc)]

    def step(self, tokens):
        out = [self.asr._step(t, s, self.enc, self.keys) for t, s in zip(tokens, self.states)]
        self.states = [s for _, s in out]
        return np.stack([logp for logp, _ in out])

    def select(self, rows):
        self.states = [self.states[i] for i in rows]


class _LmSteps:
    """The LM-step graph as beam.py's step object: every live hypothesis in one call."""

    def __init__(self, session, meta):
        self.session = session
        self.h = self.c = np.zeros((meta["layers"], 1, meta["hidden"]), np.float32)

    def step(self, tokens):
        logp, self.h, self.c = self.session.run(None, {"token": np.array(tokens, np.int64), "h": self.h, "c": self.c})
        return logp

    def select(self, rows):
        self.h, self.c = self.h[:, rows], self.c[:, rows]


def _read_meta(directory):
    path = directory / "model.json"
    if not path.is_file():
        raise ExportError(f"{path}: missing; is {directory} an export directory (python -m pipeline export)?")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable ({e})") from None
    for key in ("format_version", "model_id", "files", "vocab", "model_config"):
        if key not in meta:
            raise ExportError(f"{path}: field '{key}' is missing")
    if meta["format_version"] != FORMAT_VERSION:
        raise ExportError(f"{path}: field 'format_version' is {meta['format_version']!r}; this runner reads "
                          f"{FORMAT_VERSION}")
    return meta
