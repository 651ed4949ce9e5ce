"""The search's evaluation throughput: the same random policies scored in this process, and on a
local Ray cluster with 1 and 2 workers (1 thread each), side by side.

    python benchmarks/ray_search_bench.py --model CKPT --subset M.jsonl [--policies 8] [--out results/ray_search.json]
"""
import argparse
import sys
import time

import torch

from pipeline.atomic import write_json
from pipeline.data.manifest import read_manifest
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name
from pipeline.model.evaluate import SubsetWer
from pipeline.search.evaluator import SubsetEvaluator
from pipeline.search.parallel import RayPool
from pipeline.search.space import Approximator, searchable
from pipeline.search.subset import random_policies


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--subset", default="assets/baseline/dev_subset.jsonl")
    ap.add_argument("--policies", type=int, default=8)
    ap.add_argument("--out", default="results/ray_search.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, cmvn, _ = load_checkpoint(args.model)
    rows = read_manifest(args.subset)
    layer_list = searchable(model)
    policies = random_policies(model, args.policies, seed=1)
    metric = SubsetWer(cmvn, rows)
    local = SubsetEvaluator(Approximator(model, layer_list), metric, None)
    results = []
    t = time.perf_counter()
    expected = [local.score(p)["metric"] for p in policies]
    results.append({"how": "this process, 1 thread", "seconds": time.perf_counter() - t})
    for workers in (1, 2):
        pool = RayPool(model, layer_list, metric, workers=workers)
        pool.map(policies[:workers])  # workers loaded and warm
        t = time.perf_counter()
        got = [m["metric"] for m in pool.map(policies)]
        results.append({"how": f"Ray, {workers} worker(s) x 1 thread", "seconds": time.perf_counter() - t,
                        "same_wer": got == expected})
        pool.close()
        pool.ray.shutdown()
    for r in results:
        r["evaluations_per_minute"] = 60 * len(policies) / r["seconds"]
    base = results[0]["seconds"]
    meta = {"command": " ".join(sys.argv), "machine": cpu_name(),
            "policies": len(policies), "subset_utterances": len(rows)}
    write_json(args.out, {"meta": meta, "results": results})
    print("| evaluation | seconds | evaluations/min | speedup | same WERs |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['how']} | {r['seconds']:.1f} | {r['evaluations_per_minute']:.1f} | {base / r['seconds']:.2f}x | "
              f"{r.get('same_wer', '')} |")


if __name__ == "__main__":
    sys.exit(main())
