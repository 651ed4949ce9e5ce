"""`python -m pipeline train`: checkpoints, dev WER per epoch, and an exact resume after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.train import train

TINY_RUN = {"model": {"enc_layers": 1, "enc_hidden": 48, "dec_hidden": 48, "att_dim": 32, "conv_channels": 4},
            "train": {"epochs": 2, "batch_seconds": 12, "warmup_steps": 5, "save_every_steps": 2,
                      "dev_max_utterances": 6, "threads": 1}}


@pytest.mark.slow
def test_train_writes_checkpoints_and_resumes_exactly_after_kill(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY_RUN))
    full = train(corpus, tmp_path / "full", cfg, progress=False)
    assert [h["epoch"] for h in full["history"]] == [1, 2]
    assert all(h["train_ctc"] > 0 and h["train_att"] > 0 for h in full["history"])  # mean losses of the epoch
    for name in ("best.safetensors", "last.safetensors", "state.pt", "history.jsonl", "config.json"):
        assert (tmp_path / "full" / name).exists(), name
    model, _, header = load_checkpoint(tmp_path / "full" / "last.safetensors")
    assert header["metrics"] == {"epoch": 2, "dev_wer": full["history"][-1]["dev_wer"]}

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--data", str(corpus), "--out", str(run),
                             "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "state.pt").exists()
    with pytest.raises(PipelineError, match="pass --resume"):
        train(corpus, run, cfg, progress=False)
    resumed = train(corpus, run, resume=True, progress=False)
    assert resumed["step"] == full["step"]
    again, _, _ = load_checkpoint(run / "last.safetensors")
    for (k, va), (_, vb) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.allclose(va, vb, atol=1e-5), k


def test_train_takes_any_manifests_and_computes_cmvn(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY_RUN, "train": {**TINY_RUN["train"], "epochs": 1}}))
    st = train(None, tmp_path / "run", cfg, progress=False,
               train_manifest=corpus / "dev.jsonl", dev_manifest=corpus / "test.jsonl")
    assert st["epoch"] == 1 and (tmp_path / "run" / "cmvn.json").exists()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train_manifest"].endswith("dev.jsonl") and saved["dev_manifest"].endswith("test.jsonl")
    with pytest.raises(PipelineError, match="give --data DIR, or both"):
        train(None, tmp_path / "other", cfg, progress=False, train_manifest=corpus / "dev.jsonl")
