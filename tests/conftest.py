import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.model.config import ModelConfig


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


def rewrite_header(path, change):
    """Edit the JSON header inside a checkpoint's safetensors metadata in place."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])
    inner = json.loads(meta["__metadata__"]["header"])
    change(inner)
    meta["__metadata__"]["header"] = json.dumps(inner)
    blob = json.dumps(meta).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])


def write_wav(path, audio, sr=16000):
    sf.write(str(path), np.asarray(audio, dtype=np.float32), sr)
    return path

SMALL = ModelConfig(enc_layers=2, enc_hidden=96, dec_hidden=96, att_dim=64, conv_channels=8, dropout=0.0)


@pytest.fixture(scope="session")
def overfit(tiny_corpus):
    """A small model trained on four real utterances until greedy decoding gets them exactly."""
    from pipeline.data.dataset import SpeechDataset, collate
    from pipeline.data.features import Cmvn
    from pipeline.data.manifest import read_manifest
    from pipeline.model.asr import ASRModel
    from pipeline.model.decode import greedy

    corpus, _ = tiny_corpus
    torch.manual_seed(0)
    rows = sorted(read_manifest(corpus / "train.jsonl"), key=lambda r: r["duration"])[:4]
    cmvn = Cmvn.load(corpus / "cmvn.json")
    ds = SpeechDataset(rows, cmvn)
    batch = collate([ds[i] for i in range(len(rows))])
    model = ASRModel(SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, hyps = [], []
    for step in range(400):
        model.train()
        loss, _ = model.loss(*batch, label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 25 == 24:
            hyps = greedy(model.eval(), batch[0], batch[1])
            if hyps == [r["text"] for r in rows]:
                break
    return model.eval(), cmvn, rows, batch, losses, hyps


@pytest.fixture(scope="session")
def search_files(overfit, tmp_path_factory):
    """The overfit model as a checkpoint (`model.safetensors`) and its four utterances as an
    evaluation subset (`subset.jsonl`) and as the train split of a corpus (`--data` this folder)."""
    from pipeline.atomic import write_jsonl
    from pipeline.lowrank.checkpoint import save_checkpoint

    model, cmvn, rows, *_ = overfit
    d = tmp_path_factory.mktemp("search")
    save_checkpoint(d / "model.safetensors", model, cmvn)
    write_jsonl(d / "subset.jsonl", rows)
    write_jsonl(d / "train.jsonl", rows)  # the calibration set of `search --data` (the whitened factorisation)
    return d


@pytest.fixture(scope="session")
def host_build(tmp_path_factory):
    from pipeline.latency.targets import build_programs

    return build_programs(tmp_path_factory.mktemp("build-host"))


@pytest.fixture(scope="session")
def aarch64_build(tmp_path_factory):
    from pipeline.latency.targets import ROOT, build_programs

    return build_programs(tmp_path_factory.mktemp("build-aarch64"), ROOT / "cmake/aarch64-linux-gnu.cmake")


QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
