import numpy as np
import pytest
import torch

from pipeline.data.audio import resample
from pipeline.data.features import Cmvn, SpecAugment, compute_cmvn, fbank, file_fbank
from pipeline.errors import PipelineError


def test_fbank_shape_and_determinism(speech_wav):
    path, audio, sr = speech_wav
    a = file_fbank(path)
    b = file_fbank(path)
    n = len(resample(audio, sr))
    assert a.shape == (1 + (n - 400) // 160, 80)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


def test_any_rate_is_resampled_to_16k(speech_wav):
    _, audio, sr = speech_wav
    ref = fbank(audio, sr)
    at8k = fbank(resample(audio, sr, 8000), 8000)
    at44k = fbank(resample(audio, sr, 44100), 44100)
    assert abs(at8k.shape[0] - ref.shape[0]) <= 1 and abs(at44k.shape[0] - ref.shape[0]) <= 1
    # low bands survive an 8 kHz channel: features close where the signal lives
    assert torch.corrcoef(torch.stack([ref[:, :40].flatten(), at8k[: ref.shape[0], :40].flatten()]))[0, 1] > 0.9


def test_speed_perturbation_changes_length(speech_wav):
    path, _, _ = speech_wav
    base = file_fbank(path).shape[0]
    assert abs(file_fbank(path, speed_factor=1.1).shape[0] - base / 1.1) < 3
    assert abs(file_fbank(path, speed_factor=0.9).shape[0] - base / 0.9) < 3


def test_too_short_audio_is_an_error():
    with pytest.raises(PipelineError, match="too short"):
        fbank(np.zeros(100, dtype=np.float32))


def test_cmvn_from_train_normalises(tiny_corpus):
    corpus, _ = tiny_corpus
    cmvn = Cmvn.load(corpus / "cmvn.json")
    assert cmvn.mean.shape == (80,) and bool((cmvn.std > 0).all())
    fresh = compute_cmvn(corpus / "train.jsonl")
    assert torch.allclose(fresh.mean, cmvn.mean) and torch.allclose(fresh.std, cmvn.std)
    from pipeline.data.manifest import read_manifest
    rows = read_manifest(corpus / "train.jsonl")
    feats = torch.cat([cmvn(file_fbank(r["audio_filepath"])) for r in rows])
    assert feats.mean(0).abs().max() < 0.05 and (feats.std(0) - 1).abs().max() < 0.05


def test_cmvn_bad_json_is_a_clear_error(tmp_path):
    p = tmp_path / "cmvn.json"
    p.write_text('{"mean": [0, 0], "std": [1, 0]}')
    with pytest.raises(PipelineError, match="cmvn.json: 'mean' and 'std'"):
        Cmvn.load(p)
    p.write_text("{")
    with pytest.raises(PipelineError, match="cmvn.json: cannot read"):
        Cmvn.load(p)


def test_specaugment_masks_but_keeps_shape():
    torch.manual_seed(0)
    x = torch.randn(300, 80) + 5
    y = SpecAugment()(x)
    assert y.shape == x.shape
    bins_masked = int((y == 0).all(dim=0).sum())
    frames_masked = int((y == 0).all(dim=1).sum())
    assert (y == 0).any()
    assert bins_masked <= 2 * 27 and frames_masked <= 2 * 40  # at most two masks of each kind, within widths
    assert torch.equal(y[y != 0], x[y != 0])  # what is not masked is untouched
