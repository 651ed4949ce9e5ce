"""Bad input and faults: each gives a one-line error naming the file and field, a non-zero exit,
and loses nothing (see the table in README.md)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import SMALL, rewrite_header, run_cli, write_wav
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import PipelineError
from pipeline.lowrank.checkpoint import load_checkpoint, read_header, save_checkpoint


@pytest.fixture
def checkpoint(overfit, tmp_path):
    model, cmvn = overfit[0], overfit[1]
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, cmvn)
    return path


def test_newer_format_version_is_refused(checkpoint):
    rewrite_header(checkpoint, lambda h: h.update(format_version=99))
    with pytest.raises(PipelineError, match="m.safetensors: field 'format_version' is 99; .* upgrade"):
        load_checkpoint(checkpoint)


def test_nan_weights_are_refused(overfit, tmp_path):
    model, cmvn = overfit[0], overfit[1]
    broken = type(model)(model.cfg)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.decoder.out.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, broken, cmvn)
    with pytest.raises(PipelineError, match="nan.safetensors: tensor 'decoder.out.weight' has NaN or Inf"):
        load_checkpoint(path)


def test_empty_audio_file_is_unreadable(tmp_path):
    from pipeline.data.audio import load_audio

    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(PipelineError, match="empty.flac: unreadable audio"):
        load_audio(empty)


def test_transcribe_bad_file_is_one_line(overfit, checkpoint, tmp_path):
    res = run_cli("transcribe", "--model", str(checkpoint), str(tmp_path / "missing.wav"))
    assert res.returncode == 2 and res.stderr.strip() == f"error: {tmp_path / 'missing.wav'}: audio file not found"
    silent = write_wav(tmp_path / "short.wav", np.zeros(100))
    res = run_cli("transcribe", "--model", str(checkpoint), str(silent))
    assert res.returncode == 2 and "too short" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_kill_during_data_build_resumes_to_the_same_corpus(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "data", "build", "--preset", "tiny", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(list((out / "audio").rglob("*.flac"))) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the workers too
    proc.wait()
    assert not (out / "train.jsonl").exists()
    res = run_cli("data", "build", "--preset", "tiny", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert not list(out.rglob("*.tmp*"))
    for split in ("train", "dev", "test", "test_real"):
        assert (out / f"{split}.jsonl").read_text() == (corpus / f"{split}.jsonl").read_text(), split
    for f in (corpus / "audio").rglob("*.flac"):
        assert (out / f.relative_to(corpus)).read_bytes() == f.read_bytes()


# ---- fuzzing the parsers: any input ends in a result or a PipelineError, never anything else ----

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=4), max_leaves=8)
manifest_line = st.one_of(
    st.text(max_size=60),
    st.fixed_dictionaries({}, optional={"audio_filepath": json_values | st.just("a.wav"),
                                        "duration": json_values, "text": json_values, "id": json_values}
                          ).map(json.dumps))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(manifest_line, max_size=5))
def test_fuzz_manifest_parser(tmp_path, lines):
    from pipeline.data.manifest import read_manifest

    write_wav(tmp_path / "a.wav", np.zeros(1600)) if not (tmp_path / "a.wav").exists() else None
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))  # lone surrogates: invalid UTF-8
    try:
        rows = read_manifest(path)
    except PipelineError as e:
        assert str(path) in str(e)
    else:
        assert all(r["text"].strip() and r["duration"] > 0 for r in rows)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=json_values, cut=st.integers(min_value=0, max_value=400), raw=st.binary(max_size=64))
def test_fuzz_checkpoint_header_parser(tmp_path, header, cut, raw):
    path = tmp_path / "fuzz.safetensors"
    meta = json.dumps({"__metadata__": {"format": "asr-pipeline-checkpoint", "header": json.dumps(header)}}).encode()
    for blob in (len(meta).to_bytes(8, "little") + meta, (len(meta).to_bytes(8, "little") + meta)[:cut], raw):
        path.write_bytes(blob)
        try:
            read_header(path)
        except PipelineError as e:
            assert str(path) in str(e)


def _kill_when(cmd, ready, env=None, timeout=120):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_during_export_leaves_no_export_that_looks_whole(tmp_path):
    from export.runner import ExportError, OnnxAsr
    from pipeline.data.features import Cmvn
    from pipeline.model.asr import ASRModel

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.safetensors", ASRModel(SMALL), Cmvn(torch.zeros(80), torch.ones(80)))
    out = tmp_path / "exp"
    args = ["export", "--model", str(tmp_path / "m.safetensors"), "--out", str(out), "--int8"]
    _kill_when(args, lambda: (out / "encoder.onnx").exists())
    assert not (out / "model.json").exists()
    with pytest.raises(ExportError, match="model.json: missing"):
        OnnxAsr(out)
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert OnnxAsr(out, "int8").encode(np.zeros((50, 80), np.float32))[0].shape[1] > 0


@pytest.mark.slow
def test_kill_during_latency_table_resumes_without_repeating_a_run(tmp_path):
    from pipeline.data.features import Cmvn
    from pipeline.latency.table import RUNS
    from pipeline.model.asr import ASRModel

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.safetensors", ASRModel(SMALL), Cmvn(torch.zeros(80), torch.ones(80)))
    env = {**os.environ, "PIPELINE_CACHE": str(tmp_path / "cache")}
    args = ["latency", "table", "--model", str(tmp_path / "m.safetensors"), "--frames", "10", "--reps", "1"]

    def tables():
        return [p for p in (tmp_path / "cache" / "latency").glob("*.json") if not p.name.startswith(".")]

    def runs_done():
        try:
            return sum(len(v) for v in json.loads(tables()[0].read_text())["us_per_frame"].values())
        except (IndexError, json.JSONDecodeError, OSError):
            return 0
    _kill_when(args, lambda: runs_done() >= 20, env=env)
    before = runs_done()
    assert before >= 20
    res = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    table = json.loads(tables()[0].read_text())
    assert all(len(v) == RUNS for v in table["us_per_frame"].values())
    assert table["calibration"] and not list((tmp_path / "cache").rglob("*.tmp*"))


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    from pipeline.atomic import write_json

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "t.json"
    orphan = tmp_path / f".t.json.{dead.pid}.abc.tmp.json"
    live = tmp_path / f".t.json.{os.getpid()}.abc.tmp.json"
    other = tmp_path / f".u.json.{dead.pid}.abc.tmp.json"
    for p in (orphan, live, other):
        p.write_text("{")
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not orphan.exists() and live.exists() and other.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real file system with little space: a tmpfs of `size` bytes (needs root, as CI has)."""
    mounts = []

    def mount(size):
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", str(where)], check=False)


def _assert_full_disk_error(res, path):
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: no space left on the device"), res.stderr
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp" + path.suffix)]


def test_disk_full_during_factorize_replaces_nothing(checkpoint, small_disk):
    """safetensors writes the file itself (Rust): the failure is still named and the old file kept."""
    disk = small_disk(128 * 1024)
    out = disk / "f.safetensors"
    out.write_bytes(b"previous result")
    res = run_cli("factorize", "--model", str(checkpoint), "--uniform", "0.9", "--method", "svd", "--out", str(out))
    _assert_full_disk_error(res, out)
    assert out.read_bytes() == b"previous result"


def test_disk_full_during_export_leaves_no_export_that_looks_whole(checkpoint, small_disk):
    """onnx.save writes through Python: ENOSPC itself; model.json is never written."""
    disk = small_disk(256 * 1024)
    res = run_cli("export", "--model", str(checkpoint), "--out", str(disk / "exp"), "--lowering", "lstm_op")
    assert res.returncode == 1 and "no space left on the device" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (disk / "exp" / "model.json").exists()


@pytest.mark.slow
def test_disk_full_during_training_keeps_the_last_state_and_resumes(tiny_corpus, small_disk, tmp_path):
    """torch.save's zip writer (C++) fails mid-file: the last whole state stays and resumes."""
    from pipeline.model.asr import ASRModel

    params = sum(p.numel() for p in ASRModel(SMALL).parameters())
    disk = small_disk(int(params * 4 * 3 * 1.3))  # one model + optimiser pair fits, the next does not
    run = disk / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": SMALL.to_dict(), "train": {
        "batch_seconds": 20, "save_every_steps": 1, "dev_max_utterances": 2, "threads": 1}}))
    args = ["train", "--data", str(tiny_corpus[0]), "--config", str(cfg), "--epochs", "1"]
    res = run_cli(*args, "--out", str(run))
    assert res.returncode == 1 and "no space left on the device" in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {run}/optimizer-0000002.pt: no space left")
    saved = torch.load(run / "state.pt", weights_only=False)
    assert saved["optimizer_file"] == "optimizer-0000001.pt" and saved["progress"]["step"] == 1
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt") == ["optimizer-0000001.pt", "state.pt"]
    moved = tmp_path / "run"  # space freed: the run resumes from its last whole state
    subprocess.run(["cp", "-r", str(run), str(moved)], check=True)
    res = run_cli(*args, "--out", str(moved), "--resume")
    assert res.returncode == 0, res.stderr
    assert torch.load(moved / "state.pt", weights_only=False)["progress"]["epoch"] == 1
