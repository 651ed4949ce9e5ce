"""The "manual" curve the search must beat: the metric at one rank fraction for every layer, without
fine-tuning, and the compression each gives; by plain SVD, the whitened (data-aware)
factorisation, or both side by side.

    python benchmarks/uniform_rank_curve.py [--model CKPT] [--data corpus/default] [--split dev] \
        [--fractions 1 0.75 0.5 0.375 0.25 0.125] [--methods svd whitened] [--out results/uniform_ranks.json]
    python benchmarks/uniform_rank_curve.py --task examples.char_lm.task:task [--task-arg K=V] ...
    ... [--recover-steps N]: each whitened model also after N layer-wise recovery steps per module
    ... [--include 'encoder.*']: cut only the layers these globs name

The recogniser is scored by greedy WER on all of `--split` and calibrates on `--calibration` evenly
spaced `train` utterances (never on the split it scores); a task (`--task`) by its own `evaluate`
and `calibrate`. Writes a JSON results file and prints a markdown table (machine, threads and
command included).
"""
import argparse
import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.asr_task import AsrConfig, asr_task
from pipeline.atomic import write_json
from pipeline.cli import _task_args
from pipeline.data.manifest import read_manifest
from pipeline.lowrank import cost_table, factorize, uniform_ranks
from pipeline.lowrank.calibration import METHODS
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.lowrank.recovery import recover
from pipeline.machine import cpu_name
from pipeline.model.evaluate import evaluate
from pipeline.task import calibration_run, load_task, measure, task_calibration


def _scorer(args):
    """(task, score(model) -> {"metric", ...}, what is scored)."""
    if args.task:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ is not an installed package
        task = load_task(args.task, _task_args(args.task_arg))
        return task, lambda m: measure(task, "evaluate", task.evaluate, m), f"{task.name}: evaluate"
    task = asr_task(args.model, args.data, AsrConfig(calibration_utterances=args.calibration, threads=args.threads))
    cmvn, rows = load_checkpoint(args.model)[1], read_manifest(Path(args.data) / f"{args.split}.jsonl")

    def score(m):
        metrics, _ = evaluate(m, cmvn, rows, progress=False)
        return {"metric": metrics["wer"], **metrics}

    return task, score, f"{args.split} WER ({len(rows)} utterances)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--task", metavar="MODULE:FACTORY", help="a task of your own instead of the recogniser")
    ap.add_argument("--task-arg", action="append", metavar="KEY=VALUE")
    ap.add_argument("--include", nargs="+", metavar="GLOB", help="cut only these layers (module-path globs)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[1, 0.75, 0.5, 0.375, 0.25, 0.125])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--calibration", type=int, default=200, help="train utterances for the whitened statistics")
    ap.add_argument("--recover-steps", type=int, default=0,
                    help="also score each whitened model after this many layer-wise recovery steps per module")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/uniform_ranks.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task, score, what = _scorer(args)
    base, chosen = task.model, replace(task, include=args.include or task.include).layers()
    t = time.time()
    calib = task_calibration(task, base, chosen) if "whitened" in args.methods else None
    print(f"calibration: {time.time() - t:.1f} s; plain SVD for {len(calib.fallback) if calib else 0} layers", flush=True)
    results = []
    for frac in args.fractions:
        for method in args.methods:
            model = factorize(copy.deepcopy(base), uniform_ranks(base, frac, layer_list=chosen),
                              covs=calib.covs if method == "whitened" else None).eval()
            results.append(_row(frac, method, model, score))
            if method == "whitened" and args.recover_steps and frac < 1:
                report = recover(base, model, calibration_run(task), args.recover_steps, progress=False)
                results.append({**_row(frac, "whitened+recovery", model.eval(), score), "recovery": report})
    methods = list(dict.fromkeys(r["method"] for r in results))
    meta = {"command": " ".join(sys.argv), "machine": cpu_name(), "threads": args.threads,
            "model": args.task or args.model, "metric": what, "calibration": calib.record() if calib else None}
    write_json(args.out, {"meta": meta, "results": results})
    print(f"\n{what}, {cpu_name()}, {args.threads} threads\n\n| fraction | LSTM compression | "
          + " | ".join(methods) + " |\n|---|---|" + "---|" * len(methods))
    for frac in args.fractions:
        row = {r["method"]: r for r in results if r["fraction"] == frac}
        first = next(iter(row.values()))
        print(f"| {frac} | {first['lstm_compression']:.2f}x | " +
              " | ".join(f"{row[k]['metric']:.4f}" if k in row else "" for k in methods) + " |")


def _row(frac, method, model, score):
    t = time.time()
    m = score(model)
    _, totals = cost_table(model)
    print(f"fraction {frac:<6} {method:<18} {m['metric']:.4f}  LSTM compression {totals['lstm_compression']:.2f}x",
          flush=True)
    return {"fraction": frac, "method": method, **{k: m[k] for k in ("metric", "wer", "cer") if k in m},
            "lstm_compression": totals["lstm_compression"], "model_compression": totals["model_compression"],
            "lstm_params": totals["lstm_params"], "seconds": round(time.time() - t, 1)}


if __name__ == "__main__":
    sys.exit(main())
