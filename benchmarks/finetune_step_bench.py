"""Seconds per training step (loss + backward) of a model dense, factored through PyTorch's fused LSTM
on W = U V (training mode), and factored stepping through the factors in Python, side by side.

    python benchmarks/finetune_step_bench.py [--model assets/baseline/model.safetensors] [--fraction 0.25] \
        [--batch-seconds 64] [--threads 2]
"""
import argparse
import copy
import sys
import time

import torch

from pipeline.data.dataset import SpeechDataset, collate, duration_batches
from pipeline.data.manifest import read_manifest
from pipeline.lowrank import factorize, uniform_ranks
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.lowrank.modules import LowRankLSTM


def step_seconds(model, batch, stepped=False, reps=2):
    model.train()
    for mod in model.modules():
        if isinstance(mod, LowRankLSTM) and stepped:
            mod.eval()  # the factored path inference uses
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        loss, _ = model.loss(*batch)
        loss.backward()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--train", default="corpus/default/train.jsonl")
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--batch-seconds", type=float, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cmvn, _ = load_checkpoint(args.model)
    rows = [r for r in read_manifest(args.train) if r["duration"] <= 16]
    idx = duration_batches(rows, args.batch_seconds, seed=0)[3]
    ds = SpeechDataset(rows, cmvn)
    batch = collate([ds[i] for i in idx])
    factored = factorize(copy.deepcopy(model), uniform_ranks(model, args.fraction))
    dense = step_seconds(model, batch)
    fused = step_seconds(factored, batch)
    stepped = step_seconds(factored, batch, stepped=True)
    print(f"{len(idx)} utterances, {args.threads} thread(s): dense {dense:.2f} s, factored at {args.fraction} fused "
          f"{fused:.2f} s, factored stepped {stepped:.2f} s ({stepped / fused:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
