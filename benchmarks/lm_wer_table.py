"""WER and CER of recognisers on whole splits: greedy, beam search, and beam search fused with the
character LM, side by side (the table of docs/results.md, "Language model").

    python benchmarks/lm_wer_table.py [--models assets/baseline/model.safetensors assets/compressed-7x/model.safetensors]
        [--lm assets/lm/lm.safetensors] [--splits dev test test_real] [--json results/lm_wer.json]

Greedy: PyTorch's batched decoding. Beam: the LM's tuned beam, no LM, no bonus, length penalty 1.
Beam + LM: the LM's tuned settings (its header's "fusion", from benchmarks/lm_fusion_grid.py on dev).
Both beams: the native decoder on PyTorch's encoder states (export.native.beam_rows).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from export.native import beam_rows  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.lm_task import lm_fusion, load_lm  # noqa: E402
from pipeline.lowrank.checkpoint import load_checkpoint  # noqa: E402
from pipeline.machine import cpu_name  # noqa: E402
from pipeline.model.decode import DecodeConfig  # noqa: E402
from pipeline.model.evaluate import encoder_states, score, transcribe_rows  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["assets/baseline/model.safetensors",
                                                    "assets/compressed-7x/model.safetensors"])
    p.add_argument("--lm", default="assets/lm/lm.safetensors")
    p.add_argument("--data", default="corpus/default")
    p.add_argument("--splits", nargs="+", default=["dev", "test", "test_real"])
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args()
    torch.set_num_threads(2)
    lm = load_lm(args.lm)
    fusion = lm_fusion(args.lm)
    fused = DecodeConfig(**fusion)
    beam = DecodeConfig(beam=fused.beam)  # length-normalised (penalty 1), as beam search without an LM ranks
    table = []
    for path in args.models:
        model, cmvn, _ = load_checkpoint(path)
        for split in args.splits:
            rows = read_manifest(Path(args.data) / f"{split}.jsonl")
            refs, row = [r["text"] for r in rows], {"model": path, "split": split, "utterances": len(rows)}
            states = list(encoder_states(model, cmvn, rows, progress=False))
            for name, fn in (("greedy", lambda: transcribe_rows(model, cmvn, rows, progress=False)),
                             ("beam", lambda: beam_rows(model, cmvn, rows, beam, states=states)),
                             ("beam+lm", lambda: beam_rows(model, cmvn, rows, fused, lm, states=states))):
                t = time.time()
                s = score(refs, fn())
                row[name] = {"wer": s["wer"], "cer": s["cer"], "seconds": round(time.time() - t, 1)}
            table.append(row)
            print(f"{Path(path).parent.name:<14} {split:<9} " + "  ".join(
                f"{k} WER {row[k]['wer']:.4f} CER {row[k]['cer']:.4f}" for k in ("greedy", "beam", "beam+lm")), flush=True)
    print("\n| model | split | utterances | greedy WER | beam WER | beam + LM WER | greedy CER | beam CER | beam + LM CER |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {Path(r['model']).parent.name} | {r['split']} | {r['utterances']} | " +
              " | ".join(f"{r[k]['wer']:.4f}" for k in ("greedy", "beam", "beam+lm")) + " | " +
              " | ".join(f"{r[k]['cer']:.4f}" for k in ("greedy", "beam", "beam+lm")) + " |")
    if args.json:
        write_json(args.json, {"machine": cpu_name(), "threads": 2, "lm": args.lm, "fusion": fusion,
                               "beam": {"beam": beam.beam, "length_penalty": beam.length_penalty}, "table": table,
                               "command": "python " + " ".join(sys.argv)})


if __name__ == "__main__":
    main()
