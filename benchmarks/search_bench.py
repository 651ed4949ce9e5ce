"""Does the agent beat hand-picked ranks? Without fine-tuning, at each target: the RL agents' best
policy against the uniform policy and against random search with the same number of WER evaluations
(and greedy-by-sensitivity, which needs one evaluation per layer), each best policy then scored on
the full dev set; and the rewards against each other (ddpg) at the `--reward-targets`.

    python benchmarks/search_bench.py [--model CKPT] [--subset assets/baseline/dev_subset.jsonl] \
        [--dev corpus/default/dev.jsonl] [--episodes 200] [--targets c2 c3 s1.5] [--workers 2] \
        [--out results/search.json]

Targets: `cN` = N x compression of the LSTM weights (params, `--layers lstm`), `sN` = N x speedup of the
encoder's LSTM stack predicted by the latency table (native kernel, this machine). Runs go to
`runs/search-bench/<target>-<agent>-<reward>/` and resume; the results file is rewritten after each.
Prints, per target, the full-dev WER of each method and the relative gain over uniform (the goal:
>= 10%) and over random.
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from pipeline.asr_task import asr_task
from pipeline.atomic import write_json
from pipeline.data.manifest import read_manifest
from pipeline.lowrank import factorize
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name
from pipeline.model.evaluate import evaluate
from pipeline.search.run import SearchConfig, search


def _config(target, agent, reward, episodes, seed, method):
    kind, x = target[0], float(target[1:])
    if kind == "c":
        return SearchConfig(target_compression=x, agent=agent, reward=reward, episodes=episodes, layers="lstm", seed=seed,
                            method=method)
    return SearchConfig(target_speedup=x, agent=agent, reward=reward, episodes=episodes, seed=seed, method=method)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--subset", default="assets/baseline/dev_subset.jsonl")
    ap.add_argument("--dev", default="corpus/default/dev.jsonl")
    ap.add_argument("--data", default="corpus/default", help="corpus whose train split calibrates --method whitened")
    ap.add_argument("--method", default="svd", choices=["svd", "whitened"],
                    help="factorisation (default svd: the figures in docs/results.md were measured with it)")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--targets", nargs="+", default=["c2", "c3", "s1.5"])
    ap.add_argument("--agents", nargs="+", default=["ddpg", "reinforce", "random", "uniform", "greedy"])
    ap.add_argument("--rewards", nargs="+", default=["punish", "amc"], help="compared with ddpg's -WER")
    ap.add_argument("--reward-targets", nargs="+", default=["c3"], help="the targets where rewards are compared")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="score policies on a local Ray pool of N workers")
    ap.add_argument("--runs", default="runs/search-bench")
    ap.add_argument("--out", default="results/search.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base, cmvn, _ = load_checkpoint(args.model)
    dev = read_manifest(args.dev)
    meta = {"command": " ".join(sys.argv), "machine": cpu_name(), "threads": args.threads,
            "workers": args.workers, "model": args.model, "subset": args.subset, "dev_utterances": len(dev)}
    results = []
    for target in args.targets:
        jobs = [(a, "wer") for a in args.agents]
        jobs += [("ddpg", r) for r in args.rewards if r != "wer" and target in args.reward_targets]
        for agent, reward in jobs:
            single = agent in ("uniform", "greedy")  # one policy each: no episodes to spread over workers
            episodes = 1 if single else args.episodes
            run = Path(args.runs) / f"{target}-{agent}-{reward}"
            cfg = _config(target, agent, reward, episodes, seed=0, method=args.method)
            t = time.perf_counter()
            r = search(asr_task(args.model, args.data, subset=args.subset), run, cfg, resume=(run / "state.pt").exists(), progress=True,
                       workers=None if single else args.workers)
            seconds = time.perf_counter() - t
            model = factorize(copy.deepcopy(base), r["best"]["ranks"])
            m, _ = evaluate(model, cmvn, dev, progress=False)
            results.append({"target": target, "agent": agent, "reward": reward, "episodes": episodes,
                            "evaluations": r["evaluations"], "subset_wer": r["best"]["metric"], "dev_wer": m["wer"],
                            "cost_ratio": r["best"]["cost_ratio"], "search_seconds": round(seconds, 1)})
            write_json(args.out, {"meta": meta, "results": results})
            print(f"{target} {agent:<9} {reward:<6}: dev WER {m['wer']:.4f} (subset {r['best']['metric']:.4f}) at "
                  f"{r['best']['cost_ratio']:.3f} of dense; {r['evaluations']} evaluations", flush=True)
    print("\n| target | agent | reward | dev WER | vs uniform | vs random |\n|---|---|---|---|---|---|")
    for r in results:
        same = {x["agent"]: x["dev_wer"] for x in results if x["target"] == r["target"] and x["reward"] == "wer"}
        rel = lambda other: f"{100 * (1 - r['dev_wer'] / same[other]):+.1f}%" if same.get(other) else ""  # noqa: E731
        print(f"| {r['target']} | {r['agent']} | {r['reward']} | {r['dev_wer']:.4f} | {rel('uniform')} | {rel('random')} |")


if __name__ == "__main__":
    sys.exit(main())
