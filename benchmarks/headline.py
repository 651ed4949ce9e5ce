"""The README's headline table: each shipped model's greedy WER on whole splits, and its end-to-end
latency natively and in onnxruntime (fp32), the runtimes and models timed side by side (they take
turns utterance by utterance, so a slow spell of the machine slows all alike; a speedup is the median
of the passes' ratios, over the same runtime's dense baseline). WER is computed once per model and split and kept in the results file, so a
rerun only times.

    python benchmarks/headline.py [--data corpus/default] [--json results/headline_<machine>.json]
"""
import argparse
import json
from pathlib import Path

import torch

from pipeline.atomic import write_json
from pipeline.bench import side_by_side, speedup
from pipeline.data.manifest import read_manifest
from pipeline.lowrank import cost_table
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name
from pipeline.model.evaluate import evaluate

MODELS = {"baseline": "assets/baseline/model.safetensors", "compressed-7x": "assets/compressed-7x/model.safetensors"}
SPLITS = ("dev", "test", "test_real")
RUNTIMES = ("native", "onnx")


def lstm_compression(path):
    return cost_table(load_checkpoint(path)[0])[1]["lstm_compression"]


def word_error_rates(result, data, threads, log):
    torch.set_num_threads(threads)
    for name, path in MODELS.items():
        model, cmvn, _ = load_checkpoint(path)
        for split in SPLITS:
            if split in result["wer"].setdefault(name, {}):
                continue
            metrics, _ = evaluate(model, cmvn, read_manifest(Path(data) / f"{split}.jsonl"), progress=False)
            result["wer"][name][split] = {k: metrics[k] for k in ("wer", "cer", "utterances")}
            log(f"{name} {split}: WER {metrics['wer']:.4f}")


def latency(data, utterances, reps):
    runs = [(rt, path) for rt in RUNTIMES for path in MODELS.values()]
    rows = side_by_side(runs, Path(data) / "test.jsonl", threads=1, utterances=utterances, reps=reps)
    out = {}
    for (rt, path), r in zip(runs, rows):
        name = next(k for k, v in MODELS.items() if v == path)
        out[f"{rt}/{name}"] = {"median_ms": r["median_ms"], "pass_ms": r["pass_ms"]}
    return out


def table(result):
    """Markdown: WER per split (against the baseline's), and each runtime's median ms with its speedup
    over the same runtime's dense baseline."""
    lat = result["latency"]
    lines = ["| model | LSTM weights | " + " | ".join(f"{s} WER" for s in SPLITS) +
             " | native ms (speedup) | onnxruntime ms (speedup) |", "|---" * (4 + len(SPLITS)) + "|"]
    base = result["wer"]["baseline"]
    for name in MODELS:
        w = result["wer"][name]
        cells = [f"{w[s]['wer']:.3f}" + ("" if name == "baseline" else f" ({w[s]['wer'] / base[s]['wer']:.3f}x)")
                 for s in SPLITS]
        times = [f"{lat[f'{rt}/{name}']['median_ms']:.0f} "
                 f"({speedup(lat[f'{rt}/baseline']['pass_ms'], lat[f'{rt}/{name}']['pass_ms'])[0]:.2f}x)"
                 for rt in RUNTIMES]
        size = "dense" if name == "baseline" else f"{result['lstm_compression'][name]:.2f}x fewer"
        lines.append(f"| {name} | {size} | " + " | ".join(cells + times) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--utterances", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="for the WER (latency always takes 1)")
    ap.add_argument("--json", default="results/headline.json")
    args = ap.parse_args()
    path = Path(args.json)
    result = json.loads(path.read_text()) if path.exists() else {"wer": {}}
    result.update(machine=cpu_name(), command="python benchmarks/headline.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))
    result["lstm_compression"] = {name: lstm_compression(p) for name, p in MODELS.items()}
    word_error_rates(result, args.data, args.threads, print)
    write_json(path, result)
    result["latency"] = latency(args.data, args.utterances, args.reps)
    result["latency_setup"] = (f"1 thread, {args.utterances} test utterances, {args.reps} passes, speedups over the "
                               f"same runtime's dense baseline")
    write_json(path, result)
    print(f"{result['machine']}; WER greedy on whole splits; latency {result['latency_setup']}\n{table(result)}")


if __name__ == "__main__":
    main()
