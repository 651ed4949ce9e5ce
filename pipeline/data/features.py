"""80-dim log-mel filterbanks (Kaldi-compatible, torchaudio), global CMVN, SpecAugment, speed perturbation."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.transforms as T

from pipeline.atomic import write_json
from pipeline.data.audio import SAMPLE_RATE, load_audio, resample
from pipeline.data.augment import speed
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError


@dataclass
class FeatureConfig:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0


def fbank(audio, sr=SAMPLE_RATE, cfg=FeatureConfig()):
    """(frames, num_mel_bins) float32 log-mel features of mono samples at any rate."""
    audio = resample(np.asarray(audio, dtype=np.float32), sr)
    if len(audio) < int(SAMPLE_RATE * cfg.frame_length_ms / 1000):
        raise PipelineError(f"audio too short for one {cfg.frame_length_ms:g} ms frame ({len(audio)} samples)")
    wave = torch.from_numpy(audio).unsqueeze(0) * 32768.0  # Kaldi's scale: 16-bit integers
    return kaldi.fbank(wave, num_mel_bins=cfg.num_mel_bins, frame_length=cfg.frame_length_ms,
                       frame_shift=cfg.frame_shift_ms, dither=0.0, energy_floor=0.0,
                       sample_frequency=SAMPLE_RATE)


def file_fbank(path, cfg=FeatureConfig(), speed_factor=1.0):
    audio, sr = load_audio(path)
    audio = speed(resample(audio, sr), speed_factor)
    return fbank(audio, SAMPLE_RATE, cfg)


@dataclass
class Cmvn:
    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, feats):
        return (feats - self.mean) / self.std

    def to_json(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, obj, where="cmvn"):
        try:
            mean = torch.tensor(obj["mean"], dtype=torch.float32)
            std = torch.tensor(obj["std"], dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise PipelineError(f"{where}: field 'mean'/'std' missing or not numbers ({e})") from None
        if mean.shape != std.shape or mean.dim() != 1 or not bool((std > 0).all()):
            raise PipelineError(f"{where}: 'mean' and 'std' must be equal-length vectors with std > 0")
        return cls(mean, std)

    @classmethod
    def load(cls, path):
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PipelineError(f"{path}: cannot read CMVN statistics ({e})") from None
        return cls.from_json(obj, str(path))


def compute_cmvn(manifest, out_path=None, max_utterances=3000, cfg=FeatureConfig()):
    """Global mean and standard deviation of the features of (up to N evenly spaced) utterances."""
    rows = read_manifest(manifest)
    step = max(1, len(rows) // max_utterances)
    total, sq, n = torch.zeros(cfg.num_mel_bins, dtype=torch.float64), torch.zeros(cfg.num_mel_bins, dtype=torch.float64), 0
    for r in rows[::step]:
        f = file_fbank(r["audio_filepath"], cfg).double()
        total += f.sum(0)
        sq += (f * f).sum(0)
        n += f.shape[0]
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(1e-8).sqrt()
    cmvn = Cmvn(mean.float(), std.float())
    if out_path:
        write_json(out_path, {**cmvn.to_json(), "frames": n, "utterances": len(rows[::step]), "manifest": str(manifest)})
    return cmvn


class SpecAugment(torch.nn.Module):
    """Frequency and time masking (Park et al. 2019) on (frames, bins) features."""

    def __init__(self, freq_masks=2, freq_width=27, time_masks=2, time_width=40, max_time_ratio=0.2):
        super().__init__()
        self.freq = T.FrequencyMasking(freq_width)
        self.time = T.TimeMasking(time_width, p=max_time_ratio)
        self.freq_masks, self.time_masks = freq_masks, time_masks

    def forward(self, feats):
        x = feats.t().unsqueeze(0)  # torchaudio masks (channel, freq, time)
        for _ in range(self.freq_masks):
            x = self.freq(x)
        for _ in range(self.time_masks):
            x = self.time(x)
        return x.squeeze(0).t()
