"""Compression runs side by side (e.g. iterative against one-shot at the same target, with the same
evaluations and fine-tuning steps in all): per row the iteration's target, the cost ratio its search
reached and that policy's subset WER before fine-tuning, the LSTM compression, dev WER (the run's
per-iteration dev utterances) and test WER (the run's final-score utterances) against the baseline's
on the same utterances, and, for a run's final model, its native end-to-end speedup from the run's
bench.json.

    python benchmarks/compress_compare.py --runs runs/speedup:3 runs/oneshot-speedup:1 [--json results/compress_compare.json] \
        [--plot results/compress_compare.png]

RUN names a finished run's final model; RUN:K its iteration K (once that iteration's dev score is
there). Test scores missing from the run are computed here (2 threads) and cached in the run folder.
"""
import argparse
import json
import sys
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.bench import row_speedup
from pipeline.data.manifest import evenly_spaced, read_manifest
from pipeline.errors import PipelineError
from pipeline.finetune import cached_scores
from pipeline.lowrank import cost_table
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.task import fingerprint


def _json(path):
    if not path.exists():
        raise PipelineError(f"{path}: missing; finish that stage first (`python -m pipeline compress "
                            f"--out {path.parent} --resume`)")
    return json.loads(path.read_text())


def _iteration(run, k, final_from):
    """(checkpoint, dev scores, search result, iteration) of iteration k, or of the final model."""
    if k is None:
        if final_from == -1:
            _json(run / "iterations.json")  # names the missing file
        if final_from is None:  # no iteration within the tolerance: the final model is the baseline
            return run / "final.safetensors", _json(run / "baseline_dev.json"), {"best": {"cost_ratio": 1.0}, "target": 1.0}, None
        k = final_from
    it = run / f"iter-{k}"
    return it / "finetune" / "model.safetensors", _json(it / "dev.json"), _json(it / "search" / "best.json"), k


def summary(spec, baseline):
    run, _, k = spec.partition(":")
    run = Path(run)
    cfg = _json(run / "config.json")
    if fingerprint(load_checkpoint(baseline)[0]) != cfg["model_sha256"]:
        raise PipelineError(f"{run / 'config.json'}: model_sha256 is not that of {baseline}; pass --baseline")
    # -1: the run has not finished its iterations, so no iteration is its final model yet
    final_from = _json(run / "iterations.json")["final_from"] if (run / "iterations.json").exists() else -1
    ckpt, dev, search, k = _iteration(run, int(k) if k else None, final_from)
    rows = evenly_spaced(read_manifest(Path(cfg["data"]) / "test.jsonl"), cfg["asr"]["score_utterances"])
    threads = cfg["compress"]["threads"]
    test_base = cached_scores(run / "score_baseline_test.json", baseline, rows, threads)
    is_final = k == final_from
    test = cached_scores(run / ("score_final_test.json" if is_final else f"iter-{k}/score_test.json"), ckpt, rows,
                         threads)
    speedup = None
    if is_final and (run / "bench.json").exists():
        bench = {r["label"]: r for r in _json(run / "bench.json")["runs"]}
        speedup = row_speedup(bench["dense (native)"], bench["compressed (native)"])[0]
    c = cfg["compress"]
    return {"run": spec, "iterations": c["iterations"], "episodes": c["episodes"],
            "finetune_steps": c["finetune_steps"], "iteration": k,
            "target": search["target"],
            "target_kind": "compression" if c["target_compression"] else "speedup",
            "cost_ratio": search["best"]["cost_ratio"], "subset_wer": search["best"].get("metric"),
            "lstm_compression": cost_table(load_checkpoint(ckpt)[0])[1]["lstm_compression"],
            "dev_wer": dev["wer"], "dev_wer_baseline": _json(run / "baseline_dev.json")["wer"],
            "test_wer": test["wer"], "test_wer_baseline": test_base["wer"],
            "test_wer_ratio": test["wer"] / test_base["wer"], "native_speedup": speedup}


def plot(rows, path):
    """Test WER over the baseline's against LSTM compression; a run's rows joined from the baseline (1x, 1.0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.atomic import save_png

    fig, ax = plt.subplots(figsize=(6, 4))
    runs = {}
    for r in rows:
        runs.setdefault(r["run"].partition(":")[0], []).append(r)
    for run, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["lstm_compression"])
        ax.plot([1.0] + [r["lstm_compression"] for r in rs], [1.0] + [r["test_wer_ratio"] for r in rs], "o-",
                label=f"{run} ({rs[0]['iterations']} x {rs[0]['episodes']} x {rs[0]['finetune_steps']})")
    ax.axhline(1.05, color="grey", linestyle=":", label="1.05x the baseline")
    ax.margins(y=0.15)
    ax.set_xlabel("LSTM weights, compression (x)")
    ax.set_ylabel("test WER / baseline's")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="RUN (its final model) or RUN:K (its iteration K)")
    ap.add_argument("--baseline", default="assets/baseline/model.safetensors", help="the runs' starting checkpoint")
    ap.add_argument("--json")
    ap.add_argument("--plot", help="PNG of test WER against LSTM compression")
    args = ap.parse_args()
    try:
        rows = [summary(r, Path(args.baseline)) for r in args.runs]
    except (PipelineError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{'run':26} {'iters x episodes x steps':>24} {'target':>13} {'reached':>8} {'LSTM x':>7} "
          f"{'subset':>6} {'dev WER':>15} {'test WER':>15} {'test ratio':>10} {'native x':>8}")
    for r in rows:
        native = "" if r["native_speedup"] is None else f"{r['native_speedup']:.2f}"
        subset = "" if r["subset_wer"] is None else f"{r['subset_wer']:.4f}"
        print(f"{r['run'][-26:]:26} {r['iterations']:>6} x {r['episodes']:>5} x {r['finetune_steps']:<7} "
              f"{r['target']:5.2f} {r['target_kind']:>7} {1 / r['cost_ratio']:7.2f}x {r['lstm_compression']:7.2f} "
              f"{subset:>6} {r['dev_wer']:7.4f}/{r['dev_wer_baseline']:.4f} {r['test_wer']:7.4f}/{r['test_wer_baseline']:.4f} "
              f"{r['test_wer_ratio']:10.3f} {native:>8}")
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        write_json(args.json, {"runs": rows, "command": "python benchmarks/compress_compare.py --runs "
                                                        + " ".join(args.runs)})


if __name__ == "__main__":
    main()
