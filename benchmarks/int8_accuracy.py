"""Greedy WER and CER of checkpoints in the native runtime with their weight matrices in fp32 and in
int8, on whole splits: what int8 costs in accuracy (and, with --keep-float, what keeping some
matrices in float buys back).

    python benchmarks/int8_accuracy.py --models assets/baseline/model.safetensors \
        assets/compressed-7x/model.safetensors [--data corpus/default] [--splits dev test] \
        [--keep-float GLOB ...] [--json results/int8_accuracy.json]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export.native import NativeAsr, Precision
from pipeline.atomic import write_json
from pipeline.data.audio import load_audio, resample
from pipeline.data.manifest import read_manifest
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name
from pipeline.model.evaluate import score


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--splits", nargs="+", default=["dev", "test"])
    ap.add_argument("--keep-float", nargs="*", default=[], metavar="GLOB", help="native entries kept float in int8")
    ap.add_argument("--json")
    args = ap.parse_args()
    precisions = {"fp32": Precision(), "int8": Precision(True, args.keep_float)}
    runs = []
    print(f"{cpu_name()}, native runtime, greedy attention decoding; int8 keeps float: {args.keep_float or 'none'}")
    for path in args.models:
        model, cmvn, _ = load_checkpoint(path)
        asrs = {name: NativeAsr(model, cmvn, precision=p) for name, p in precisions.items()}
        for split in args.splits:
            rows = read_manifest(Path(args.data) / f"{split}.jsonl")
            hyps, t0 = {name: [] for name in asrs}, time.time()
            for r in tqdm(rows, desc=f"{Path(path).parent.name} {split}", unit="utt", leave=False):
                samples = np.ascontiguousarray(resample(*load_audio(r["audio_filepath"], allow_multichannel=True)))
                for name, asr in asrs.items():
                    hyps[name].append(asr.run(samples)["text"])
            refs = [r["text"] for r in rows]
            m = {name: score(refs, h) for name, h in hyps.items()}
            rel = m["int8"]["wer"] / m["fp32"]["wer"] - 1
            same = sum(a == b for a, b in zip(hyps["fp32"], hyps["int8"])) / len(rows)
            runs.append({"model": path, "split": split, "utterances": len(rows), "fp32": m["fp32"], "int8": m["int8"],
                         "wer_relative_change": rel, "identical_transcripts": same, "seconds": round(time.time() - t0)})
            print(f"{path[-40:]:40} {split:5} WER fp32 {m['fp32']['wer']:.4f} int8 {m['int8']['wer']:.4f} "
                  f"({100 * rel:+.2f}%)  CER {m['fp32']['cer']:.4f} / {m['int8']['cer']:.4f}  "
                  f"identical transcripts {100 * same:.1f}% of {len(rows)}", flush=True)
    if args.json:
        write_json(args.json, {"machine": cpu_name(), "keep_float": args.keep_float, "runs": runs,
                               "command": "python " + " ".join(sys.argv)})


if __name__ == "__main__":
    main()
