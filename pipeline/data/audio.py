"""Audio I/O (soundfile), resampling to 16 kHz (torchaudio) and the validity checks of the corpus."""
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from pipeline.errors import PipelineError

SAMPLE_RATE = 16000
# Speaking rate bounds in seconds per character of transcript: outside them the audio and
# the text cannot belong together (a cut in the wrong place, a TTS failure, a hang).
MIN_SEC_PER_CHAR, MAX_SEC_PER_CHAR = 0.025, 0.30
PAUSE_ALLOWANCE = 1.0  # seconds of leading/trailing pause a short prompt may carry
MIN_PEAK = 10 ** (-40 / 20)  # quieter than -40 dBFS at its loudest counts as silent


def load_audio(path, allow_multichannel=False):
    """Read any file soundfile can decode; returns (mono float32, sample rate). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: audio file not found")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise PipelineError(f"{path}: unreadable audio ({e})") from None
    if audio.shape[0] == 0:
        raise PipelineError(f"{path}: audio has zero length")
    if audio.shape[1] != 1:
        if not allow_multichannel:
            raise PipelineError(f"{path}: audio has {audio.shape[1]} channels; expected mono")
        audio = audio.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(audio[:, 0]), sr


def resample(audio, sr, target=SAMPLE_RATE):
    if sr == target:
        return audio
    return AF.resample(torch.from_numpy(audio), sr, target).numpy()


def write_flac(path, audio, sr=SAMPLE_RATE):
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0.99:  # clipping in PCM_16 would add distortion the model learns
        audio = audio * (0.99 / peak)
    sf.write(str(path), audio, sr, format="FLAC", subtype="PCM_16")


def check_utterance(audio, sr, text):
    """Why this audio/text pair is unusable, or None when it is fine."""
    if not text or not text.strip():
        return "empty text"
    dur = len(audio) / sr
    if dur < 0.3:
        return f"too short ({dur:.2f} s)"
    if not np.isfinite(audio).all():
        return "non-finite samples"
    if float(np.abs(audio).max()) < MIN_PEAK:
        return "silent"
    lo, hi = MIN_SEC_PER_CHAR * len(text), PAUSE_ALLOWANCE + MAX_SEC_PER_CHAR * len(text)
    if not lo <= dur <= hi:
        return f"{dur:.2f} s is implausible for {len(text)} characters of text (allowed {lo:.2f}-{hi:.2f} s)"
    return None


def trim_silence(audio, sr, threshold_db=-45.0, pad=0.15):
    """Cut leading and trailing silence, keeping `pad` seconds around the speech."""
    frame = sr // 100
    n = len(audio) // frame
    if n == 0:
        return audio
    energy = np.sqrt((audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(energy / (energy.max() + 1e-12)) > threshold_db)[0]
    if loud.size == 0:
        return audio
    a = max(0, loud[0] * frame - int(pad * sr))
    b = min(len(audio), (loud[-1] + 1) * frame + int(pad * sr))
    return audio[a:b]
