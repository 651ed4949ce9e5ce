"""Scale-out: the search's evaluations on a local Ray cluster, and training under torchrun (DDP, gloo)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def _search(files, out, *extra):
    return ["search", "--model", str(files / "model.safetensors"), "--subset", str(files / "subset.jsonl"),
            "--data", str(files),
            "--out", str(out), "--threads", "1", "--target-compression", "2", "--agent", "ddpg", *extra]


def _log(out):
    return [(r["ranks"], r["metric"], r["reward"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())]


def _keys(out):
    return [json.loads(x)["key"] for x in (out / "cache.jsonl").read_text().splitlines() if x.strip()]


def test_ray_search_is_the_same_with_one_or_two_workers(search_files, tmp_path):
    runs = {}
    for name, extra in (("local", []), ("ray1", ["--workers", "1"]), ("ray2", ["--workers", "2"])):
        r = run_cli(*_search(search_files, tmp_path / name, "--episodes", "12", *extra), timeout=900)
        assert r.returncode == 0, r.stderr
        runs[name] = _log(tmp_path / name)
        assert len(_keys(tmp_path / name)) == len(set(_keys(tmp_path / name)))
    assert runs["ray1"] == runs["ray2"] == runs["local"]


def test_a_killed_ray_worker_loses_and_duplicates_nothing(search_files, tmp_path):
    args = ["--episodes", "40", "--workers", "2"]
    clean = tmp_path / "clean"
    assert run_cli(*_search(search_files, clean, *args), timeout=900).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *_search(search_files, out, *args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.time() + 600
    while time.time() < deadline and proc.poll() is None and killed is None:
        if (out / "cache.jsonl").exists() and len(_keys(out)) >= 4:
            pids = subprocess.run(["pgrep", "-f", "ray::_Worker"], capture_output=True, text=True).stdout.split()
            if pids:
                killed = int(pids[0])
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=900)
    assert killed is not None, "no Ray worker was found to kill"
    assert proc.returncode == 0, err
    keys = _keys(out)
    assert len(keys) == len(set(keys)), "an evaluation was recorded twice"
    assert _log(out) == _log(clean)


TINY_RUN = {"model": {"enc_layers": 1, "enc_hidden": 48, "dec_hidden": 48, "att_dim": 32, "conv_channels": 4,
                      "dropout": 0.0},
            "train": {"epochs": 1, "batch_seconds": 24, "warmup_steps": 3, "save_every_steps": 2, "lr": 1e-3,
                      "dev_max_utterances": 4, "threads": 1, "specaugment": False, "speeds": [1.0]}}


def _fixed_batch_loss(checkpoint, corpus, untrained=False):
    import torch

    from pipeline.data.dataset import SpeechDataset, collate
    from pipeline.data.manifest import read_manifest
    from pipeline.lowrank.checkpoint import load_checkpoint
    from pipeline.model.asr import ASRModel

    model, cmvn, _ = load_checkpoint(checkpoint)
    if untrained:  # the weights training starts from (train seeds torch, then builds the model)
        torch.manual_seed(0)
        model = ASRModel(model.cfg).eval()
    rows = read_manifest(corpus / "train.jsonl")[:6]
    ds = SpeechDataset(rows, cmvn)
    with torch.no_grad():
        return float(model.loss(*collate([ds[i] for i in range(len(rows))]), label_smoothing=0.0)[0])


def test_torchrun_ddp_trains_like_one_process_and_shares_its_checkpoints(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY_RUN))
    args = ["train", "--data", str(corpus), "--config", str(cfg)]
    r = run_cli(*args, "--out", str(tmp_path / "one"), timeout=900)
    assert r.returncode == 0, r.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    r = subprocess.run([*torchrun, "-m", "pipeline", *args, "--out", str(tmp_path / "two")], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    one = [json.loads(x) for x in (tmp_path / "one" / "history.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in one] == [h["step"] for h in two]  # the same batches, shared between the ranks
    single = _fixed_batch_loss(tmp_path / "one" / "last.safetensors", corpus)
    untrained = _fixed_batch_loss(tmp_path / "one" / "last.safetensors", corpus, untrained=True)
    ddp = _fixed_batch_loss(tmp_path / "two" / "last.safetensors", corpus)
    print(f"fixed-batch loss: untrained {untrained:.4f}, one process {single:.4f}, two under DDP {ddp:.4f}")
    assert abs(ddp - single) < 0.1 * abs(untrained - single), (untrained, single, ddp)
    # The DDP run's state resumes in a single process, and a single process's state under torchrun.
    r = run_cli("train", "--data", str(corpus), "--out", str(tmp_path / "two"), "--resume", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*torchrun, "-m", "pipeline", "train", "--data", str(corpus), "--out", str(tmp_path / "one"),
                        "--resume", "--epochs", "2"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for run in ("one", "two"):
        assert [h["epoch"] for h in map(json.loads, (tmp_path / run / "history.jsonl").read_text().splitlines())] == [1, 2]


def test_torchrun_compress_fine_tunes_under_ddp_like_one_process(search_files, tiny_corpus, tmp_path):
    """Rank 0 searches, scores and writes; both ranks fine-tune each batch's halves (DDP). The
    single-process run searches on two Ray workers: the same search."""
    import torch
    from safetensors.torch import load_file

    corpus, _ = tiny_corpus
    args = ["compress", "--model", str(search_files / "model.safetensors"), "--data", str(corpus),
            "--target-compression", "2", "--iterations", "1", "--episodes", "3", "--finetune-steps", "4",
            "--distill", "0.5", "--threads", "1"]
    r = run_cli(*args, "--workers", "2", "--out", str(tmp_path / "one"), timeout=1200)  # its searches on Ray
    assert r.returncode == 0, r.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518"]
    r = subprocess.run([*torchrun, "-m", "pipeline", *args, "--out", str(tmp_path / "two")], capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("final:") == 1  # one rank reports
    one, two = (json.loads((tmp_path / d / "iterations.json").read_text())["history"] for d in ("one", "two"))
    assert [h["cost_ratio"] for h in one] == [h["cost_ratio"] for h in two]  # the same search on rank 0
    assert (tmp_path / "two" / "report.md").exists()
    start = load_file(str(tmp_path / "one" / "iter-1" / "search" / "best.safetensors"))
    w1, w2 = (load_file(str(tmp_path / d / "iter-1" / "finetune" / "model.safetensors")) for d in ("one", "two"))
    moved = sum(float((w1[k] - start[k]).norm() ** 2) for k in start) ** 0.5
    apart = sum(float((w2[k] - w1[k]).norm() ** 2) for k in start) ** 0.5
    print(f"fine-tuning moved the weights {moved:.4f}; DDP and one process end {apart:.4f} apart")
    assert moved > 0 and apart < 0.35 * moved, (moved, apart)
    assert torch.load(tmp_path / "two" / "iter-1" / "finetune" / "state.pt", weights_only=False)["progress"]["step"] == 4
