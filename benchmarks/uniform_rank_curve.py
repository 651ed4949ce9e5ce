"""The "manual" curve the search must beat: dev WER of one rank fraction for every layer, without
fine-tuning, and the compression each gives; by plain SVD, the whitened (data-aware)
factorisation, or both side by side.

    python benchmarks/uniform_rank_curve.py [--model CKPT] [--data corpus/default] [--split dev] \
        [--fractions 1 0.75 0.5 0.375 0.25 0.125] [--methods svd whitened] [--out results/uniform_ranks.json]

The whitened factorisation calibrates on `--calibration` evenly spaced `train` utterances (never on
the split it scores). Writes a JSON results file and prints a markdown table (machine, threads and
command included).
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from pipeline.asr_task import AsrConfig, asr_task
from pipeline.atomic import write_json
from pipeline.data.manifest import read_manifest
from pipeline.lowrank import cost_table, factorize, select, uniform_ranks
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name
from pipeline.model.evaluate import evaluate
from pipeline.task import task_calibration


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--fractions", type=float, nargs="+", default=[1, 0.75, 0.5, 0.375, 0.25, 0.125])
    ap.add_argument("--methods", nargs="+", default=["svd", "whitened"], choices=["svd", "whitened"])
    ap.add_argument("--calibration", type=int, default=200, help="train utterances for the whitened statistics")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/uniform_ranks.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = asr_task(args.model, args.data, AsrConfig(calibration_utterances=args.calibration, threads=args.threads))
    base, cmvn = task.model, load_checkpoint(args.model)[1]
    rows = read_manifest(Path(args.data) / f"{args.split}.jsonl")
    t = time.time()
    covs = task_calibration(task, base, select(base)).covs if "whitened" in args.methods else None
    print(f"calibration: {time.time() - t:.1f} s", flush=True)
    results = []
    for frac in args.fractions:
        for method in args.methods:
            model = factorize(copy.deepcopy(base), uniform_ranks(base, frac),
                              covs=covs if method == "whitened" else None).eval()
            t = time.time()
            m, _ = evaluate(model, cmvn, rows, progress=False)
            _, totals = cost_table(model)
            results.append({"fraction": frac, "method": method, "wer": m["wer"], "cer": m["cer"],
                            "lstm_compression": totals["lstm_compression"],
                            "model_compression": totals["model_compression"],
                            "lstm_params": totals["lstm_params"], "seconds": round(time.time() - t, 1)})
            print(f"fraction {frac:<6} {method:<9} {args.split} WER {m['wer']:.4f}  "
                  f"LSTM compression {totals['lstm_compression']:.2f}x", flush=True)
    meta = {"command": " ".join(sys.argv), "machine": cpu_name(), "threads": args.threads, "model": args.model,
            "split": args.split, "utterances": len(rows), "calibration_utterances": args.calibration}
    write_json(args.out, {"meta": meta, "results": results})
    print(f"\n| fraction | method | {args.split} WER | {args.split} CER | LSTM compression | model compression |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['fraction']} | {r['method']} | {r['wer']:.4f} | {r['cer']:.4f} | {r['lstm_compression']:.2f}x "
              f"| {r['model_compression']:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
