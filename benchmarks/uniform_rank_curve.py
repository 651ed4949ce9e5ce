"""The "manual" curve the search must beat: dev WER of one rank fraction for every layer, without
fine-tuning, and the compression each gives.

    python benchmarks/uniform_rank_curve.py [--model CKPT] [--manifest corpus/default/dev.jsonl] \
        [--fractions 1 0.75 0.5 0.375 0.25 0.125] [--out results/uniform_ranks.json]

Writes a JSON results file and prints a markdown table (machine, threads and command included).
"""
import argparse
import copy
import sys
import time

import torch

from pipeline.atomic import write_json
from pipeline.data.manifest import read_manifest
from pipeline.lowrank import cost_table, factorize, uniform_ranks
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name
from pipeline.model.evaluate import evaluate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--manifest", default="corpus/default/dev.jsonl")
    ap.add_argument("--fractions", type=float, nargs="+", default=[1, 0.75, 0.5, 0.375, 0.25, 0.125])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/uniform_ranks.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base, cmvn, _ = load_checkpoint(args.model)
    rows = read_manifest(args.manifest)
    results = []
    for frac in args.fractions:
        model = factorize(copy.deepcopy(base), uniform_ranks(base, frac)).eval()
        t = time.time()
        m, _ = evaluate(model, cmvn, rows, progress=False)
        _, totals = cost_table(model)
        results.append({"fraction": frac, "dev_wer": m["wer"], "dev_cer": m["cer"],
                        "lstm_compression": totals["lstm_compression"], "model_compression": totals["model_compression"],
                        "lstm_params": totals["lstm_params"], "seconds": round(time.time() - t, 1)})
        print(f"fraction {frac:<6} WER {m['wer']:.4f}  LSTM compression {totals['lstm_compression']:.2f}x", flush=True)
    meta = {"command": " ".join(sys.argv), "machine": cpu_name(),
            "threads": args.threads, "model": args.model, "manifest": args.manifest, "utterances": len(rows)}
    write_json(args.out, {"meta": meta, "results": results})
    print("\n| fraction | dev WER | dev CER | LSTM compression | model compression |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['fraction']} | {r['dev_wer']:.4f} | {r['dev_cer']:.4f} | {r['lstm_compression']:.2f}x "
              f"| {r['model_compression']:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
