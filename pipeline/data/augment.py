"""Waveform augmentation of the synthetic training speech: speed, noise, reverb, telephone band.

Every function takes float32 samples at 16 kHz and a numpy Generator, so a seed fixes the result.
"""
from fractions import Fraction

import numpy as np
import torch
import torchaudio.functional as AF

SR = 16000
SPEEDS = (0.9, 1.0, 1.1)


def speed(audio, factor):
    """Play `factor` times faster (tempo and pitch together, as sox `speed`)."""
    if factor == 1.0:
        return audio
    f = Fraction(factor).limit_denominator(100)
    return AF.resample(torch.from_numpy(audio), f.numerator, f.denominator).numpy()


def add_noise(audio, snr_db, rng):
    """Add white, pink or brown noise at `snr_db` dB below the speech power."""
    kind = rng.choice(["white", "pink", "brown"])
    spec = np.fft.rfft(rng.standard_normal(len(audio)))
    freqs = np.maximum(np.fft.rfftfreq(len(audio)), 1.0 / len(audio))
    spec *= {"white": 1.0, "pink": freqs ** -0.5, "brown": freqs ** -1.0}[kind]
    noise = np.fft.irfft(spec, n=len(audio)).astype(np.float32)
    p_sig = float(np.mean(audio ** 2)) + 1e-12
    p_noise = float(np.mean(noise ** 2)) + 1e-12
    return audio + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))


def reverb(audio, rng):
    """Convolve with a synthetic room response: exponentially decaying noise, RT60 0.2-0.8 s."""
    rt60 = rng.uniform(0.2, 0.8)
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    rir[0] = 1.0 / rng.uniform(0.3, 1.0)  # direct path, stronger for a closer talker
    rir = (rir / np.sqrt(np.sum(rir ** 2))).astype(np.float32)
    wet = AF.fftconvolve(torch.from_numpy(audio), torch.from_numpy(rir)).numpy()[: len(audio)]
    return wet * (np.abs(audio).max() / (np.abs(wet).max() + 1e-9))


def telephone(audio):
    """300-3400 Hz band through an 8 kHz channel, back to 16 kHz."""
    x = torch.from_numpy(audio)
    x = AF.highpass_biquad(x, SR, 300.0)
    x = AF.lowpass_biquad(x, SR, 3400.0)
    x = AF.resample(AF.resample(x, SR, 8000), 8000, SR)
    return x.numpy()[: len(audio)]


def random_plan(rng, with_speed=True):
    """Draw which augmentations one utterance gets; the plan is stored in its manifest row."""
    plan = {"speed": float(rng.choice(SPEEDS)) if with_speed else 1.0}
    if rng.random() < 0.2:
        plan["reverb"] = True
    if rng.random() < 0.15:
        plan["telephone"] = True
    if rng.random() < 0.5:
        plan["snr_db"] = round(float(rng.uniform(5, 30)), 1)
    return plan


def apply_plan(audio, plan, rng):
    audio = speed(audio, plan.get("speed", 1.0))
    if plan.get("reverb"):
        audio = reverb(audio, rng)
    if plan.get("telephone"):
        audio = telephone(audio)
    if "snr_db" in plan:
        audio = add_noise(audio, plan["snr_db"], rng)
    return audio.astype(np.float32)
