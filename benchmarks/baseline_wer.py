"""Greedy WER and CER of a checkpoint on every split of a corpus, beside pocketsphinx's where known.

    python benchmarks/baseline_wer.py [--model assets/baseline/model.safetensors] [--data corpus/default] \
        [--splits dev test test_real] [--beam 1] [--out results/baseline_wer.json]
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from pipeline.atomic import write_json
from pipeline.data.manifest import read_manifest
from pipeline.evaluate import evaluate
from pipeline.model.checkpoint import load_checkpoint
from pipeline.model.decode import DecodeConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--splits", nargs="+", default=["dev", "test", "test_real"])
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/baseline_wer.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cmvn, header = load_checkpoint(args.model)
    out = {"meta": {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
                    "threads": args.threads, "model": args.model, "model_metrics": header.get("metrics", {})},
           "splits": {}}
    for split in args.splits:
        rows = read_manifest(Path(args.data) / f"{split}.jsonl")
        t = time.time()
        m, hyps = evaluate(model, cmvn, rows, DecodeConfig(beam=args.beam), progress=False)
        m["seconds"] = round(time.time() - t, 1)
        m["examples"] = [{"ref": r["text"], "hyp": h} for r, h in list(zip(rows, hyps))[:5]]
        out["splits"][split] = m
        print(f"{split:<10} WER {m['wer']:.4f}  CER {m['cer']:.4f}  ({m['utterances']} utterances, {m['seconds']} s)",
              flush=True)
    write_json(args.out, out)


if __name__ == "__main__":
    sys.exit(main())
