"""`python -m pipeline compress` end to end on the tiny corpus, and its resume after kill -9."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

ARGS = ["--target-compression", "2.5", "--iterations", "2", "--episodes", "3", "--finetune-steps", "3",
        "--distill", "0.5", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_model(search_files):
    return search_files / "model.safetensors"


def _args(model, corpus, out, *extra):
    return ["compress", "--model", str(model), "--data", str(corpus), "--out", str(out), *ARGS, *extra]


def _result(out):
    it = json.loads((out / "iterations.json").read_text())
    tensors = load_file(str(out / "final.safetensors"))
    return ([(h["cost_ratio"], h["metric"]) for h in it["history"]], json.loads((out / "scores.json").read_text()),
            {k: v.tolist() for k, v in tensors.items()})


def test_compress_end_to_end_and_resume_after_kill(tiny_model, tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    whole = tmp_path / "whole"
    r = run_cli(*_args(tiny_model, corpus, whole, "--precision", "int8"), timeout=1200)
    assert r.returncode == 0, r.stderr
    it = json.loads((whole / "iterations.json").read_text())
    assert 1 <= len(it["history"]) <= 2
    assert all(h["cost_ratio"] <= 1 / h["target"] + 1e-9 for h in it["history"])
    for name in ("final.safetensors", "export/model.json", "export/encoder.int8.onnx",
                 "native/model.lrkm", "native/model.int8.lrkm", "report.md", "wer_vs_compression.png", "latency.png",
                 "iter-1/search/search.png"):
        assert (whole / name).exists(), name
    bench = json.loads((whole / "bench.json").read_text())
    assert {r["label"] for r in bench["runs"]} >= {"dense (native)", "compressed (native)", "compressed (onnxruntime)",
                                                   "dense (native int8)", "compressed (native int8)",
                                                   "dense (onnxruntime int8)", "compressed (onnxruntime int8)"}
    scores = json.loads((whole / "scores.json").read_text())
    assert set(scores) == {"dev", "test", "test_real"}
    # greedy and, beside it, fused with the shipped LM at its tuned settings
    lm = scores["test"]["final"]["lm"]
    assert 0 <= lm["wer"] <= 2 and lm["decoding"]["lm"] == "assets/lm/lm.safetensors" and lm["decoding"]["beam"] > 1
    report = (whole / "report.md").read_text()
    assert "| test |" in report and "speedup over dense (native)" in report and "final WER + LM" in report
    assert all(len(r["pass_ms"]) == 3 for r in bench["runs"])  # the passes its speedups are taken over
    assert re.search(r"\| compressed \(native\) \|.* \| [\d.]+x \([\d.]+-[\d.]+\) \|", report)
    _check_compare(whole, tiny_model, it, scores, tmp_path)

    # The same run through the Python API (the recogniser as a task), killed and resumed by the CLI.
    killed = tmp_path / "killed"
    api = (f"from pipeline.asr_task import AsrConfig, asr_task\n"
           f"from pipeline.compress import CompressConfig, compress\n"
           f"task = asr_task({str(tiny_model)!r}, {str(corpus)!r}, AsrConfig(distill=0.5, threads=1), out={str(killed)!r})\n"
           f"compress(task, {str(killed)!r}, CompressConfig(target_compression=2.5, iterations=2, episodes=3, "
           f"finetune_steps=3, threads=1))\n")
    proc = subprocess.Popen([sys.executable, "-c", api], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill in the middle of iteration 1's fine-tuning
        if (killed / "iter-1" / "finetune" / "state.pt").exists():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    r = run_cli(*_args(tiny_model, corpus, killed, "--resume"), timeout=1200)
    assert r.returncode == 0, r.stderr
    assert _result(killed) == _result(whole)


def _check_compare(run, model, it, scores, tmp_path):
    """benchmarks/compress_compare.py reads a run's final model and an iteration of it."""
    out = tmp_path / "compare.json"
    r = subprocess.run([sys.executable, "benchmarks/compress_compare.py", "--baseline", str(model), "--json", str(out),
                        "--plot", str(tmp_path / "compare.png"), "--runs", str(run), f"{run}:1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final, first = json.loads(out.read_text())["runs"]
    assert final["iteration"] == it["final_from"] and first["iteration"] == 1
    assert final["test_wer"] == scores["test"]["final"]["wer"]
    assert final["test_wer_baseline"] == first["test_wer_baseline"] == scores["test"]["baseline"]["wer"]
    assert first["dev_wer"] == it["history"][0]["metric"]
    assert first["subset_wer"] == it["history"][0]["subset_metric_before_finetune"]
    assert final["native_speedup"] > 0
    other = run / "iter-1" / "finetune" / "model.safetensors"  # fine-tuned, so never the runs' baseline
    r = subprocess.run([sys.executable, "benchmarks/compress_compare.py", "--runs", str(run), "--baseline", str(other)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode != 0 and "config.json" in r.stderr and "model_sha256" in r.stderr


def test_compress_refuses_a_used_folder_and_a_changed_config(tiny_model, tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"compress": {}, "model_sha256": "x", "data": "y"}))
    r = run_cli(*_args(tiny_model, corpus, out))
    assert r.returncode != 0 and "--resume" in r.stderr
    r = run_cli(*_args(tiny_model, corpus, out, "--resume"))
    assert r.returncode != 0 and "differ" in r.stderr and "config.json" in r.stderr
    r = run_cli(*_args(tiny_model, corpus, tmp_path / "new", "--target-speedup", "2"))
    assert r.returncode != 0 and "not both" in r.stderr
    r = run_cli(*_args(tiny_model, corpus, tmp_path / "new", "--distill", "1.5"))
    assert r.returncode == 2 and "--distill 1.5: a weight between 0 and 1" in r.stderr


def test_search_subset_of_a_relative_corpus_path_reads_back_from_the_run_folder(tiny_corpus, tmp_path, monkeypatch):
    from pipeline.asr_task import subset_path
    from pipeline.data.manifest import read_manifest

    corpus, _ = tiny_corpus
    monkeypatch.chdir(corpus.parent)  # `--data corpus` as `make compress` passes it: relative to the cwd
    run = tmp_path / "run"
    run.mkdir()
    rows = read_manifest(subset_path(corpus.name, run))  # audio paths resolve from the run folder
    assert rows and all(Path(r["audio_filepath"]).exists() for r in rows)


def test_finetune_command_trains_scores_and_resumes(tiny_model, tiny_corpus, tmp_path):
    """`python -m pipeline finetune`: more steps on a checkpoint, its dev WER, and a resume that redoes nothing."""
    import torch

    corpus, _ = tiny_corpus
    out = tmp_path / "more"
    args = ["finetune", "--model", str(tiny_model), "--data", str(corpus), "--steps", "3", "--lr", "1e-3",
            "--threads", "1", "--dev-utterances", "4", "--out", str(out)]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert re.search(r"dev WER [\d.]+ \(4 utterances\)", r.stdout)
    before, after = load_file(str(tiny_model)), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "dev.json").read_text())["utterances"] == 4
    r = run_cli(*args)
    assert r.returncode != 0 and "not empty" in r.stderr and "--resume" in r.stderr
    r = run_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    again = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(again[k], after[k]) for k in after)
    distilled = run_cli(*args[:-2], "--out", str(tmp_path / "kd"), "--distill", "0.5", "--teacher", str(tiny_model),
                        "--steps", "1")
    assert distilled.returncode == 0, distilled.stderr
    r = run_cli(*args[:-2], "--out", str(tmp_path / "bad"), "--steps", "0")
    assert r.returncode != 0 and "--steps 0" in r.stderr
