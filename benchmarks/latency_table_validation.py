"""The latency table's predictions against measured encoder latency, in several runs of
`latency validate` (10 random rank policies each, seeds 1..N), written as one results file.

    python benchmarks/latency_table_validation.py [--model assets/baseline/model.safetensors] [--runs 5] \
        [--runtime native] [--json results/latency_table_validation.json]
"""
import argparse

from pipeline.atomic import write_json
from pipeline.latency.table import LatencyTable, validate
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--policies", type=int, default=10)
    ap.add_argument("--runtime", default="native")
    ap.add_argument("--json")
    args = ap.parse_args()
    model = load_checkpoint(args.model)[0]
    table = LatencyTable("local", args.runtime)
    table.measure(model)
    runs = []
    for seed in range(1, args.runs + 1):
        pairs = validate(model, table, args.policies, seed, log=lambda *_: None)
        worst = max(abs(p["error"]) for p in pairs)
        runs.append({"seed": seed, "pairs": pairs, "worst_abs_error": worst, "scale": table.scale(model)})
        print(f"run {seed}: errors " + " ".join(f"{100 * p['error']:+.1f}%" for p in pairs)
              + f"; worst {100 * worst:.1f}%")
    if args.json:
        write_json(args.json, {"machine": f"{cpu_name()}, 1 thread", "runtime": args.runtime, "table": str(table.path),
                               "worst_abs_error_per_run": [r["worst_abs_error"] for r in runs], "runs": runs,
                               "command": f"python benchmarks/latency_table_validation.py --model {args.model} "
                                          f"--runs {args.runs} --runtime {args.runtime}"})


if __name__ == "__main__":
    main()
