"""Greedy WER and CER of a checkpoint on every split of a corpus: attention decoding (with the CTC
length cap) and, beside it, greedy CTC decoding of the encoder alone.

    python benchmarks/baseline_wer.py [--model assets/baseline/model.safetensors] [--data corpus/default] \
        [--splits dev test test_real] [--max-utterances N] [--beam 1] [--out results/baseline_wer.json]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

from pipeline.atomic import write_json
from pipeline.data.manifest import evenly_spaced, read_manifest
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name
from pipeline.model.decode import DecodeConfig
from pipeline.model.evaluate import evaluate, score


def by_source(rows, hyps, ctc_hyps):
    """WER and CER of each source (TTS, game recordings, prompts) within a split, both decoders."""
    groups = {}
    for r, h, c in zip(rows, hyps, ctc_hyps):
        groups.setdefault(r.get("source", "?"), []).append((r["text"], h, c))
    out = {}
    for src, g in sorted(groups.items()):
        refs, att, ctc = zip(*g)
        a, c = score(list(refs), list(att)), score(list(refs), list(ctc))
        out[src] = {"utterances": len(g), "wer": a["wer"], "cer": a["cer"], "ctc_wer": c["wer"], "ctc_cer": c["cer"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--splits", nargs="+", default=["dev", "test", "test_real"])
    ap.add_argument("--max-utterances", type=int, default=0, help="evenly spaced utterances per split (0: all)")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/baseline_wer.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cmvn, header = load_checkpoint(args.model)
    out = {"meta": {"command": " ".join(sys.argv), "machine": cpu_name(),
                    "threads": args.threads, "model": args.model, "model_metrics": header.get("metrics", {})},
           "splits": {}}
    for split in args.splits:
        rows = evenly_spaced(read_manifest(Path(args.data) / f"{split}.jsonl"), args.max_utterances)
        t = time.time()
        m, hyps = evaluate(model, cmvn, rows, DecodeConfig(beam=args.beam), progress=False)
        m["seconds"] = round(time.time() - t, 1)
        m["examples"] = [{"ref": r["text"], "hyp": h} for r, h in list(zip(rows, hyps))[:5]]
        m["ctc"], ctc_hyps = evaluate(model, cmvn, rows, DecodeConfig(decoder="ctc"), progress=False)
        m["by_source"] = by_source(rows, hyps, ctc_hyps)
        out["splits"][split] = m
        print(f"{split:<10} WER {m['wer']:.4f}  CER {m['cer']:.4f}  CTC greedy WER {m['ctc']['wer']:.4f}  "
              f"CER {m['ctc']['cer']:.4f}  ({m['utterances']} utterances, {m['seconds']} s)", flush=True)
        for src, b in m["by_source"].items():
            print(f"  {src:<10} WER {b['wer']:.4f}  CER {b['cer']:.4f}  CTC greedy WER {b['ctc_wer']:.4f}  "
                  f"({b['utterances']} utterances)", flush=True)
        write_json(args.out, out)  # each split as soon as it is scored


if __name__ == "__main__":
    sys.exit(main())
