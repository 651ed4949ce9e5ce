"""The models in assets/: the baseline every command defaults to and the compressed model of the
README's headline, which must stay what the README says it is."""
from pathlib import Path

import pytest
import torch

from pipeline.data.audio import load_audio
from pipeline.data.features import fbank
from pipeline.lowrank import cost_table
from pipeline.lowrank.checkpoint import load_checkpoint, sha256
from pipeline.model.decode import greedy

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BASELINE, COMPRESSED = ASSETS / "baseline" / "model.safetensors", ASSETS / "compressed-7x" / "model.safetensors"


def test_compressed_model_is_the_baselines_at_over_5x():
    model, _, header = load_checkpoint(COMPRESSED)
    assert header["provenance"]["parent_sha256"] == sha256(BASELINE)
    assert cost_table(model)[1]["lstm_compression"] == pytest.approx(5.30, abs=0.01)
    assert cost_table(load_checkpoint(BASELINE)[0])[1]["lstm_compression"] == 1.0


@pytest.mark.parametrize("path", [BASELINE, COMPRESSED], ids=["baseline", "compressed-7x"])
def test_shipped_model_transcribes_natively_as_in_pytorch(path, speech_wav):
    from export import native

    torch.set_num_threads(1)
    model, cmvn, _ = load_checkpoint(path)
    audio, sr = load_audio(speech_wav[0])
    feats = cmvn(fbank(audio, sr))[None]
    with torch.no_grad():
        ref = greedy(model, feats, torch.tensor([feats.shape[1]]))[0]
    assert ref.split() and native.NativeAsr(model, cmvn).transcribe(audio, sr) == ref
