"""Tunes shallow fusion on `dev` only: WER over a grid of LM weight x length bonus x length penalty
(at one beam), then over beams at the best of those; prints each grid and writes the best into the
LM file's header ("fusion": the defaults of `eval/transcribe --lm`, `compress` and the model card).

    python benchmarks/lm_fusion_grid.py [--model assets/baseline/model.safetensors]
        [--lm assets/lm/lm.safetensors] [--utterances 300] [--write] [--json results/lm_fusion_grid.json]

Decoding: the native decoder's beam search on PyTorch's encoder states (export.native.beam_rows),
the same search as PyTorch's and onnxruntime's (tests/test_lm_fusion.py).
"""
import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from export.native import beam_rows  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.data.manifest import evenly_spaced, read_manifest  # noqa: E402
from pipeline.lm_task import load_lm, read_lm_header, save_lm  # noqa: E402
from pipeline.lowrank.checkpoint import load_checkpoint  # noqa: E402
from pipeline.machine import cpu_name  # noqa: E402
from pipeline.model.decode import DecodeConfig  # noqa: E402
from pipeline.model.evaluate import encoder_states, score  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="assets/baseline/model.safetensors")
    p.add_argument("--lm", default="assets/lm/lm.safetensors")
    p.add_argument("--manifest", default="corpus/default/dev.jsonl", help="dev only: tuning never reads test")
    p.add_argument("--utterances", type=int, default=300, help="evenly spaced (0: all)")
    p.add_argument("--beam", type=int, default=8)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.2, 0.35, 0.5, 0.7])
    p.add_argument("--bonuses", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
    p.add_argument("--penalties", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--beams", type=int, nargs="+", default=[4, 8, 12])
    p.add_argument("--write", action="store_true", help="store the best settings in the LM file's header")
    p.add_argument("--json", help="also write the grids here")
    args = p.parse_args()
    if "test" in Path(args.manifest).name:
        sys.exit("error: tune on dev only")
    torch.set_num_threads(2)
    model, cmvn, _ = load_checkpoint(args.model)
    lm = load_lm(args.lm)
    rows = evenly_spaced(read_manifest(args.manifest), args.utterances)
    refs = [r["text"] for r in rows]
    states = list(encoder_states(model, cmvn, rows, progress=False))

    def wer(cfg):
        s = score(refs, beam_rows(model, cmvn, rows, cfg, lm, progress=False, states=states))
        return s["wer"], s["cer"]

    grid, t0 = [], time.time()
    print(f"{args.manifest}: {len(rows)} utterances; beam {args.beam}; WER (CER)")
    print("penalty weight " + " ".join(f"bonus {b:<9g}" for b in args.bonuses))
    for pen, w in itertools.product(args.penalties, args.weights):
        cells = []
        for b in args.bonuses:
            cfg = DecodeConfig(beam=args.beam, lm_weight=w, length_bonus=b, length_penalty=pen)
            cells.append(wer(cfg))
            grid.append({"beam": args.beam, "lm_weight": w, "length_bonus": b, "length_penalty": pen,
                         "wer": cells[-1][0], "cer": cells[-1][1]})
        print(f"{pen:<7g} {w:<6g} " + " ".join(f"{c[0]:.4f} ({c[1]:.3f})" for c in cells), flush=True)
    best = min(grid, key=lambda g: (g["wer"], g["cer"]))
    beams = []
    for k in args.beams:
        cfg = DecodeConfig(beam=k, lm_weight=best["lm_weight"], length_bonus=best["length_bonus"],
                           length_penalty=best["length_penalty"])
        t = time.time()
        w, c = wer(cfg)
        beams.append({**{f: getattr(cfg, f) for f in ("beam", "lm_weight", "length_bonus", "length_penalty")},
                      "wer": w, "cer": c, "seconds": time.time() - t})
        print(f"beam {k}: WER {w:.4f} CER {c:.4f} ({beams[-1]['seconds']:.0f} s)", flush=True)
    best = min(beams, key=lambda g: (g["wer"], g["cer"], g["beam"]))
    fusion = {k: best[k] for k in ("beam", "lm_weight", "length_bonus", "length_penalty")}
    print(f"best on {args.manifest}: {fusion}: WER {best['wer']:.4f} CER {best['cer']:.4f} "
          f"({time.time() - t0:.0f} s in all)")
    result = {"machine": cpu_name(), "threads": "2 (encoder), 1 (native decoder)", "model": args.model, "lm": args.lm,
              "manifest": args.manifest, "utterances": len(rows), "grid": grid, "beams": beams, "best": fusion,
              "command": "python " + " ".join(sys.argv)}
    if args.json:
        write_json(args.json, result)
    if args.write:
        header = read_lm_header(args.lm)
        save_lm(args.lm, lm, {**{k: v for k, v in header.items() if k != "ranks"},
                              "fusion": {**fusion, "tuned_on": f"{args.manifest} ({len(rows)} utterances)"}})
        print(f"wrote the fusion defaults into {args.lm}")


if __name__ == "__main__":
    main()
