"""Compression runs side by side (e.g. iterative against one-shot at the same target and the same
fine-tuning steps in all): LSTM compression of the final model, its WER per split against the
baseline's on the same utterances, and its native end-to-end speedup, from each run folder's files.

    python benchmarks/compress_compare.py --runs runs/headline runs/oneshot [--json results/compress_compare.json]
"""
import argparse
import json
import sys
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.errors import PipelineError
from pipeline.lowrank import cost_table
from pipeline.model.checkpoint import load_checkpoint


def summary(run):
    """One run folder's figures; names the missing file when the run has not finished."""
    run = Path(run)
    files = {}
    for name in ("config.json", "iterations.json", "scores.json", "bench.json", "final.safetensors"):
        if not (run / name).exists():
            raise PipelineError(f"{run / name}: missing; finish the run first (`python -m pipeline compress "
                                f"--out {run} --resume`)")
        if name.endswith(".json"):
            files[name] = json.loads((run / name).read_text())
    cfg, its = files["config.json"]["compress"], files["iterations.json"]
    bench = {r["label"]: r["median_ms"] for r in files["bench.json"]["runs"]}
    wer = {split: {k: v["wer"] for k, v in s.items()} for split, s in files["scores.json"].items()}
    return {"run": str(run), "iterations": cfg["iterations"], "finetune_steps": cfg["finetune_steps"],
            "iterations_done": len(its["history"]), "final_from": its["final_from"], "stopped": its["stopped"],
            "lstm_compression": cost_table(load_checkpoint(run / "final.safetensors")[0])[1]["lstm_compression"],
            "wer": wer, "test_wer_ratio": wer["test"]["final"] / wer["test"]["baseline"],
            "native_speedup": bench["dense (native)"] / bench["compressed (native)"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        rows = [summary(r) for r in args.runs]
    except PipelineError as e:
        sys.exit(f"error: {e}")
    print(f"{'run':28} {'iters x steps':>13} {'final':>6} {'LSTM x':>7} {'dev WER':>15} {'test WER':>15} "
          f"{'test ratio':>10} {'native x':>8}")
    for r in rows:
        w = r["wer"]
        print(f"{r['run'][-28:]:28} {r['iterations']:>5} x {r['finetune_steps']:<5} {str(r['final_from']):>6} "
              f"{r['lstm_compression']:7.2f} {w['dev']['final']:7.4f}/{w['dev']['baseline']:.4f} "
              f"{w['test']['final']:7.4f}/{w['test']['baseline']:.4f} {r['test_wer_ratio']:10.3f} "
              f"{r['native_speedup']:8.2f}")
    if args.json:
        write_json(args.json, {"runs": rows, "command": "python benchmarks/compress_compare.py --runs "
                                                        + " ".join(args.runs)})


if __name__ == "__main__":
    main()
