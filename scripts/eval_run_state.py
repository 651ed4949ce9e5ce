"""Greedy dev WER of a training run's latest state (`state.pt`), between the epoch ends that score it.

    python scripts/eval_run_state.py [--run runs/baseline] [--data corpus/default] [--out CKPT]

Scores the same evenly spaced dev utterances as training (`dev_max_utterances`); `--out` also writes
the state's weights as a checkpoint.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from pipeline.data.features import Cmvn
from pipeline.data.manifest import read_manifest
from pipeline.lowrank.checkpoint import save_checkpoint
from pipeline.model.asr import ASRModel
from pipeline.model.config import ModelConfig
from pipeline.model.evaluate import evaluate
from pipeline.train import TrainConfig, dev_subset


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/baseline")
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())
    tcfg = TrainConfig.from_dict(cfg["train"], str(run / "config.json"))
    state = torch.load(run / "state.pt", weights_only=False)
    model = ASRModel(ModelConfig.from_dict(cfg["model"], str(run / "config.json")))
    model.load_state_dict(state["model"])
    cmvn = Cmvn.load(Path(args.data) / "cmvn.json")
    rows = dev_subset(read_manifest(Path(args.data) / "dev.jsonl"), tcfg.dev_max_utterances)
    m, _ = evaluate(model.eval(), cmvn, rows, progress=False)
    step = state["progress"]["step"]
    print(f"{run} step {step}: greedy dev WER {m['wer']:.4f} CER {m['cer']:.4f} on {m['utterances']} utterances")
    if args.out:
        save_checkpoint(args.out, model, cmvn, {"run": str(run), "step": step}, {"dev_wer": m["wer"]})


if __name__ == "__main__":
    sys.exit(main())
