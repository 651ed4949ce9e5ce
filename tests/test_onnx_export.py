"""ONNX export of dense and factored checkpoints, run with real onnxruntime sessions: graph checks,
encoder parity, identical transcripts (greedy and beam), int8, the ORT format, the torch-free runner
and its errors."""
import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli

from export.onnx_export import export
from export.runner import ExportError, OnnxAsr
from export.runner import fbank as np_fbank
from pipeline.data.features import fbank as torch_fbank
from pipeline.lowrank import factorize
from pipeline.lowrank.checkpoint import save_checkpoint
from pipeline.model.decode import DecodeConfig, beam_search, ctc_greedy, greedy

RANKS = {"encoder.lstms.0.fwd.l0.ih": 32, "encoder.lstms.0.fwd.l0.hh": 24, "encoder.lstms.1.bwd.l0.ih": 40,
         "encoder.lstms.1.bwd.l0.hh": 16, "decoder.lstm.l0.ih": 48, "decoder.out": 16}


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def exported(overfit, tmp_path_factory):
    """The overfit model, dense and factored, each exported (the factored one with both lowerings)."""
    model, cmvn, rows, batch, _, _ = overfit
    root = tmp_path_factory.mktemp("onnx")
    factored = factorize(copy.deepcopy(model), RANKS).eval()
    out = {}
    for name, m in (("dense", model), ("factored", factored)):
        save_checkpoint(root / f"{name}.safetensors", m, cmvn)
    out["dense"] = (model, export(root / "dense.safetensors", root / "dense", int8=True, ort_format=True, log=quiet))
    for lowering in ("lstm_op", "scan"):
        out[lowering] = (factored, export(root / "factored.safetensors", root / lowering, lowering=lowering,
                                          log=quiet))
    return root, out, cmvn, rows


def test_numpy_fbank_matches_torchaudio(speech_wav):
    """At 16 kHz and at the 22,050 Hz espeak-ng speaks, resampled by the runner's own filter."""
    from pipeline.data.audio import resample

    _, audio, sr = speech_wav
    assert sr == 22050
    # float32 (torchaudio) and float64 (numpy) FFTs differ visibly only in the log of near-silent bins; the
    # two float32 resamplers differ by ~1e-5 per sample, which shows in a few more.
    for a, rate, p99 in ((resample(audio, sr), 16000, 2e-3), (audio, sr, 5e-3)):
        want, got = torch_fbank(a, rate).numpy(), np_fbank(a, rate)
        assert got.shape == want.shape
        diff = np.abs(got - want)
        assert diff.mean() < 5e-4 and np.quantile(diff, 0.99) < p99 and diff.max() < 0.05, rate


@pytest.mark.parametrize("which", ["dense", "lstm_op", "scan"])
def test_graphs_check_and_encoder_matches_torch(exported, which):
    root, out, cmvn, rows = exported
    model, meta = out[which]
    for f in ("encoder.onnx", "decoder_step.onnx"):
        onnx.checker.check_model(onnx.load(str(root / which / f)), full_check=True)
    ops = {n.op_type for n in onnx.load(str(root / which / "encoder.onnx")).graph.node}
    assert ("Scan" in ops) == (which == "scan") and "LSTM" in ops
    asr = OnnxAsr(root / which)
    for r in rows:
        feats = torch_fbank(*_audio(r))
        with torch.no_grad():
            want = model.encode(cmvn(feats)[None], torch.tensor([feats.shape[0]]))[0][0].numpy()
        got = asr.encode(feats.numpy())[0][0]
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("which", ["dense", "lstm_op", "scan"])
def test_transcripts_identical_to_pytorch(exported, which):
    root, out, cmvn, rows = exported
    model, _ = out[which]
    asr = OnnxAsr(root / which)
    for r in rows:
        audio, sr = _audio(r)
        feats = cmvn(torch_fbank(audio, sr))[None]
        lengths = torch.tensor([feats.shape[1]])
        assert asr.transcribe(audio, sr) == greedy(model, feats, lengths)[0]
        assert asr.transcribe(audio, sr, beam=5) == beam_search(model, feats, lengths, DecodeConfig(beam=5))[0]
        assert asr.transcribe(audio, sr, decoder="ctc") == ctc_greedy(model, feats, lengths)[0]


def test_int8_and_ort_files_load_and_decode(exported):
    root, out, _, rows = exported
    meta = out["dense"][1]
    assert {"encoder_int8", "decoder_step_int8", "encoder_ort", "decoder_step_ort", "encoder_int8_ort"} <= set(meta["files"])
    texts = {v: [OnnxAsr(root / "dense", variant=v).transcribe(*_audio(r)) for r in rows]
             for v in ("fp32", "int8", "ort", "int8_ort")}
    assert texts["ort"] == texts["fp32"] == [r["text"] for r in rows]  # the overfit model gets them exactly
    assert texts["int8_ort"] == texts["int8"] and all(texts["int8"])


def test_runner_imports_no_torch():
    code = "import sys, export.runner; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_cli_transcribe_onnx_matches_torch(exported):
    root, _, _, rows = exported
    path = rows[0]["audio_filepath"]
    onnx_out = run_cli("transcribe", "--onnx", str(root / "dense"), path)
    torch_out = run_cli("transcribe", "--model", str(root / "dense.safetensors"), path)
    assert onnx_out.returncode == 0, onnx_out.stderr
    assert onnx_out.stdout == torch_out.stdout and rows[0]["text"] in onnx_out.stdout
    ctc = [run_cli("transcribe", *src, "--decoder", "ctc", path)
           for src in (("--onnx", str(root / "dense")), ("--model", str(root / "dense.safetensors")))]
    assert ctc[0].returncode == 0 and ctc[0].stdout == ctc[1].stdout, ctc[0].stderr


def test_missing_or_mismatched_files_give_clear_errors(exported, tmp_path):
    root, _, _, rows = exported
    bad = tmp_path / "bad"
    shutil.copytree(root / "lstm_op", bad)
    shutil.copy(root / "dense" / "decoder_step.onnx", bad / "decoder_step.onnx")  # from another export
    with pytest.raises(ExportError, match=r"decoder_step.onnx: metadata field 'model_id'"):
        OnnxAsr(bad)
    (bad / "decoder_step.onnx").unlink()
    with pytest.raises(ExportError, match=r"decoder_step.onnx: file named in model.json is missing"):
        OnnxAsr(bad)
    (bad / "encoder.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match=r"encoder.onnx: onnxruntime cannot load it"):
        OnnxAsr(bad)
    with pytest.raises(ExportError, match=r"field 'files' has no encoder_int8"):
        OnnxAsr(root / "lstm_op", variant="int8")
    meta = json.loads((bad / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**meta, "format_version": 9}))
    with pytest.raises(ExportError, match=r"model.json: field 'format_version' is 9"):
        OnnxAsr(bad)
    (bad / "model.json").unlink()
    res = run_cli("transcribe", "--onnx", str(bad), rows[0]["audio_filepath"])
    assert res.returncode == 2 and "model.json: missing" in res.stderr and "Traceback" not in res.stderr


def _audio(row):
    import soundfile as sf

    audio, sr = sf.read(row["audio_filepath"], dtype="float32")
    return audio, sr
