import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """The tiny preset built once, with the real TTS engines and recordings."""
    from pipeline.data.build import build

    out = tmp_path_factory.mktemp("tiny")
    summary = build("tiny", out, seed=0)
    return out, summary


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def speech_wav(tmp_path):
    """A real spoken sentence (espeak-ng), 16 kHz mono wav."""
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), "hello world this is a test"], check=True)
    audio, sr = sf.read(path, dtype="float32")
    return path, audio, sr


def write_wav(path, audio, sr=16000):
    sf.write(str(path), np.asarray(audio, dtype=np.float32), sr)
    return path
