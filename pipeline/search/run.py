"""The rank search loop on a task (pipeline/task.py), its run folder and its resume.

Run folder: `config.json` (the search config; a resume must match it), `cache.jsonl` (policy -> the
task's subset metric, appended per evaluation), `state.pt` (agent, random states, episode log; written
atomically after every episode), `log.jsonl` (one line per episode, from state.pt), `best.json`,
`best.safetensors` (the best policy as a factored checkpoint), `search.png` and `best_ranks.png`.
A killed run resumes from state.pt; the episodes after it replay the same actions (the random
states are restored), so their evaluations come from the cache and none is repeated.

Rewards (higher is better; the budget wall keeps every episode at or under its target cost):
- `wer`: -metric on the subset (AMC's resource-constrained mode; the name is the recogniser's). The default.
- `punish`: cost saved (1 - cost / dense cost) minus 10 x the metric above the dense model's + tolerance.
- `amc`: -metric x log(cost) (AMC's accuracy-guaranteed mode).
"""
import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.atomic import atomic_path, read_json, save_png, write_json, write_jsonl
from pipeline.errors import PipelineError
from pipeline.latency.cost import CostModel, stack_latency_cost
from pipeline.latency.onnx_layers import OnnxLayerCost
from pipeline.latency.table import PRECISIONS, lstm_cells
from pipeline.lowrank.calibration import METHODS
from pipeline.lowrank.factorize import factorize
from pipeline.search.agents import make_agent
from pipeline.search.evaluator import SubsetEvaluator
from pipeline.search.parallel import RayPool
from pipeline.search.space import Approximator, RankSpace, searchable
from pipeline.task import fingerprint, measure, save_factored, task_calibration
from pipeline.train import load_state_file

AGENTS = ("ddpg", "reinforce", "random", "uniform", "greedy")
REWARDS = ("wer", "punish", "amc")
PUNISHMENT = 10.0
BEFORE = {"method": "svd", "precision": "fp32"}  # what a search config written before a field existed meant by its absence


@dataclass
class SearchConfig:
    target_compression: float | None = None
    target_speedup: float | None = None
    agent: str = "ddpg"
    reward: str = "wer"
    episodes: int = 200
    cost: str | None = None       # default: params for a compression target, latency for a speedup
    device: str = "local"         # where latency is measured (a bench target)
    runtime: str = "native"       # latency of the native kernel or of onnxruntime
    precision: str = "fp32"       # latency with the weight matrices in fp32 or int8 (native only)
    layers: str = "all"           # all compressible matrices, or the LSTM matrices only
    method: str = "whitened"      # factorisation: plain SVD, or whitened by the inputs' statistics
    min_fraction: float = 0.1     # smallest keep fraction of a layer's rank
    tolerance: float = 0.02       # `punish`: WER allowed above the dense model's
    seed: int = 0
    batch: int = 4                # episodes proposed with the same agent state, evaluated together

    def validate(self):
        if (self.target_compression is None) == (self.target_speedup is None):
            raise PipelineError("give exactly one of --target-compression X and --target-speedup X")
        if self.cost is None:
            self.cost = "params" if self.target_compression is not None else "latency"
        if self.target_speedup is not None and self.cost != "latency":
            raise PipelineError(f"--target-speedup needs --cost latency, not {self.cost}")
        if self.target_compression is not None and self.cost == "latency":
            raise PipelineError("--cost latency goes with --target-speedup; a compression target counts params or macs")
        if self.agent not in AGENTS:
            raise PipelineError(f"--agent {self.agent!r}: choose one of {', '.join(AGENTS)}")
        if self.precision not in PRECISIONS:
            raise PipelineError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.precision != "fp32" and self.cost == "latency" and self.runtime != "native":
            raise PipelineError("--precision int8: int8 latency is the native kernels' (--runtime native)")
        if self.method not in METHODS:
            raise PipelineError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.reward not in REWARDS:
            raise PipelineError(f"--reward {self.reward!r}: choose one of {', '.join(REWARDS)}")
        if self.episodes < 1:
            raise PipelineError(f"--episodes {self.episodes}: must be at least 1")
        if self.batch < 1:
            raise PipelineError(f"--batch {self.batch}: must be at least 1")
        if not 0 < self.min_fraction < 1:
            raise PipelineError(f"min fraction {self.min_fraction}: must be in (0, 1)")
        return self

    @property
    def target(self):
        return self.target_compression or self.target_speedup


def reward_of(name, metric, cost, reference, base, tolerance):
    if name == "wer":
        return -metric
    if name == "punish":
        return (1.0 - cost / reference) - PUNISHMENT * max(0.0, metric - base - tolerance)
    return -metric * float(np.log(cost))


def run_episode(space, agent, approx, episode):
    """One walk over the layers: (policy, [(state, the agent's action after the wall)]). Agents act
    relative to the even fraction (space.py); the uniform agent's action is absolute."""
    decided, steps, prev = {}, [], 1.0
    for i, layer in enumerate(space.layers):
        even = space.even_action(i, decided)
        s = space.state(i, decided, prev, approx, even)
        a = agent.act(s, episode)
        rank = space.wall(i, decided, space.rank_of(layer, a if agent.absolute else space.absolute(a, even)))
        decided[layer.name] = rank
        prev = space.action_of(layer, rank)
        steps.append((s, prev if agent.absolute else space.relative(layer, rank, even)))
    return decided, steps


def _config_file(out, cfg, task, model_sha256, resume):
    """Writes config.json, or on resume checks that it matches (only --episodes may change)."""
    want = {"search": asdict(cfg), "task": task.name, "model_sha256": model_sha256, **task.extra}
    path = out / "config.json"
    if resume:
        if not (out / "state.pt").exists():
            raise PipelineError(f"{out / 'state.pt'}: nothing to resume (no state file)")
        have = read_json(path)
        for key in ("model_sha256", *task.extra):
            if have.get(key) != want[key]:
                raise PipelineError(f"{path}: field '{key}' differs from this run's; start a new --out")
        for k, v in want["search"].items():
            old = have["search"].get(k, BEFORE.get(k, v))  # a field older runs lack has its value of then
            if k != "episodes" and old != v:
                raise PipelineError(f"{path}: field 'search.{k}' is {old!r} there, {v!r} now")
    elif (out / "state.pt").exists():
        raise PipelineError(f"{out}: holds a search already; pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, want)


def _cost_model(task, layer_list, cfg):
    if cfg.cost != "latency":
        return CostModel(task.model, layer_list, cfg.cost)
    if task.latency_cost is not None:
        return task.latency_cost(task.model, layer_list, cfg)
    if lstm_cells(task.model):  # the native kernels run its LSTM stacks
        return stack_latency_cost(task.model, layer_list, cfg.device, precision=cfg.precision)
    if cfg.precision != "fp32":
        raise PipelineError("--precision int8: int8 latency is the native LSTM stacks'; this model has none "
                            "(its onnxruntime latency is fp32)")
    return OnnxLayerCost(task.model, task.example_inputs, layer_list)


def search(task, out, cfg, resume=False, progress=True, ray=None, workers=None):
    """Searches ranks for `task.model` (its selected layers) under cfg's target; returns best.json's
    content and writes `best.safetensors` (the task's `save`, else a task checkpoint)."""
    out, cfg = Path(out), cfg.validate()
    model_sha256 = fingerprint(task.model)
    _config_file(out, cfg, task, model_sha256, resume)
    model = task.model.eval()
    layer_list = searchable(model, cfg.layers, task.layers())
    cost = _cost_model(task, layer_list, cfg)
    space = RankSpace(model, cost, cfg.target, cfg.min_fraction, cfg.layers, layer_list)
    calib = task_calibration(task, model, space.layers) if cfg.method == "whitened" else None
    if calib and calib.fallback and progress:
        print(f"whitened factorisation: plain SVD for {len(calib.fallback)} of {len(space.layers)} layers: " +
              "; ".join(f"{n} ({why})" for n, why in list(calib.fallback.items())[:4]) +
              (" ..." if len(calib.fallback) > 4 else ""), flush=True)
    covs = calib.covs if calib else None
    approx = Approximator(model, space.layers, covs)
    metric = _subset_metric(task)
    evaluate = SubsetEvaluator(approx, metric, out / "cache.jsonl")
    base = evaluate({})["metric"]
    pool = RayPool(model, space.layers, metric, ray, workers, covs=covs) if ray is not None or workers is not None else None
    try:
        if cfg.agent == "greedy":
            log = greedy_search(space, evaluate, cfg, base, pool)
            with atomic_path(out / "state.pt") as tmp:
                torch.save({"agent": None, "progress": {"episode": 1, "log": log}}, tmp)
        else:
            log = _agent_search(out, cfg, space, approx, evaluate, base, pool, resume, progress)
    finally:
        if pool is not None:
            pool.close()
    return finish(out, task, model_sha256, log, base, cfg, space, approx, calib)


class _subset_metric:
    """The task's evaluate_subset (else evaluate) as measure() checks it; holds that callable alone
    (not the task), so Ray can send it to its workers."""

    def __init__(self, task):
        self.name, self.fn = task.name, task.evaluate_subset or task.evaluate
        self.what = "evaluate_subset" if task.evaluate_subset else "evaluate"

    def __call__(self, model):
        return measure(self.name, self.what, self.fn, model)


def _agent_search(out, cfg, space, approx, evaluate, base, pool, resume, progress):
    """Episodes in batches of `cfg.batch` proposed with one agent state; the state is saved after each."""
    agent = make_agent(cfg.agent, cfg.episodes, cfg.seed, space.uniform_action())
    st = {"episode": 0, "log": []}
    if resume:
        saved = load_state_file(out / "state.pt")
        try:
            agent.load_state_dict(saved["agent"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:  # e.g. another state size (space.STATE_DIM)
            raise PipelineError(f"{out / 'state.pt'}: the saved {cfg.agent} agent does not fit this version's "
                                f"({str(e).splitlines()[0][:200]}); start a new search folder") from e
        st = saved["progress"]
    bar = tqdm(total=cfg.episodes, initial=st["episode"], desc=f"search ({cfg.agent})", unit="episode",
               disable=not progress)
    while st["episode"] < cfg.episodes:
        first = st["episode"]
        proposals = [run_episode(space, agent, approx, ep) for ep in range(first, min(cfg.episodes, first + cfg.batch))]
        scores = evaluate.many([p for p, _ in proposals], pool)
        for j, ((policy, steps), metrics) in enumerate(zip(proposals, scores)):
            row = _row(policy, metrics, space, cfg, base, first + j, len(evaluate.cache))
            agent.observe(steps, row["reward"], first + j)
            st["log"].append(row)
        st["episode"] = first + len(proposals)
        with atomic_path(out / "state.pt") as tmp:
            torch.save({"agent": agent.state_dict(), "progress": st}, tmp)
        write_jsonl(out / "log.jsonl", st["log"])
        best = max(st["log"], key=lambda r: r["reward"])
        bar.set_postfix(best=f"{best['metric']:.3f}", metric=f"{row['metric']:.3f}", cost=f"{row['cost_ratio']:.3f}")
        bar.update(len(proposals))
    bar.close()
    return st["log"]


def _row(policy, metrics, space, cfg, base, episode, evaluations, kind="episode"):
    c = space.cost.total(policy)
    return {"episode": episode, "kind": kind, "metric": metrics["metric"],
            "details": {k: v for k, v in metrics.items() if k != "metric"},
            "cost": c, "cost_ratio": c / space.cost.reference, "meets_budget": c <= space.budget * (1 + 1e-9),
            "reward": reward_of(cfg.reward, metrics["metric"], c, space.cost.reference, base, cfg.tolerance),
            "evaluations": evaluations, "ranks": policy}


def greedy_search(space, evaluate, cfg, base, pool=None):
    """Greedy by per-layer sensitivity: each layer alone at a quarter of its rank (one evaluation
    each), then ranks lowered step by step where the metric's rise per unit of cost saved is smallest,
    until the budget is met; the result is evaluated once."""
    probe_action = (0.25 - cfg.min_fraction) / (1 - cfg.min_fraction)
    probes = [{l.name: space.rank_of(l, probe_action)} for l in space.layers]
    rows = [_row(p, m, space, cfg, base, i, len(evaluate.cache), kind="probe")
            for i, (p, m) in enumerate(zip(probes, evaluate.many(probes, pool)))]
    sens = {l.name: max(0.0, r["metric"] - base) / max(1e-12, 1.0 - r["cost_ratio"]) for l, r in zip(space.layers, rows)}
    policy = {l.name: l.rank for l in space.layers}
    steps = {l.name: space.candidates(l) for l in space.layers}
    while space.cost.total(policy) > space.budget:
        movable = [l for l in space.layers if steps[l.name].index(policy[l.name]) > 0]
        if not movable:
            break
        pick = min(movable, key=lambda l: sens[l.name])
        ladder = steps[pick.name]
        policy[pick.name] = ladder[ladder.index(policy[pick.name]) - 1]
    rows.append(_row(policy, evaluate(policy), space, cfg, base, len(space.layers), len(evaluate.cache)))
    return rows


def finish(out, task, model_sha256, log, base, cfg, space, approx, calib=None):
    episodes = [r for r in log if r["kind"] == "episode"]
    best = max(episodes, key=lambda r: r["reward"])
    result = {"best": best, "base_metric": base, "metric": task.metric, "episodes": len(episodes),
              "evaluations": log[-1]["evaluations"], "target": cfg.target, "cost": cfg.cost, "agent": cfg.agent,
              "reward": cfg.reward, "energy": {n: approx.energy(n, r) for n, r in best["ranks"].items()},
              "factorisation": calib.record() if calib else {"method": "svd"}}
    write_json(out / "best.json", result)
    write_jsonl(out / "log.jsonl", log)
    factored = factorize(copy.deepcopy(task.model), best["ranks"], covs=calib.covs if calib else None)
    meta = {"provenance": {"parent_sha256": model_sha256, "search_run": str(out), **task.extra,
                           "factorisation": result["factorisation"]},
            "metrics": {"subset_metric": best["metric"], "cost_ratio": best["cost_ratio"], "cost": cfg.cost},
            "energy": result["energy"]}
    (task.save or save_factored)(out / "best.safetensors", factored, meta)
    plot(out, log, best, space, task.metric)
    return result


def plot(out, log, best, space, metric="metric"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [r for r in log if r["kind"] == "episode"]
    x = [r["episode"] for r in eps]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for ax, key, label in zip(axes, ("reward", "metric", "cost_ratio"), ("reward", f"{metric} (subset)", "cost / dense")):
        ys = [r[key] for r in eps]
        ax.plot(x, ys, ".", ms=3, alpha=0.6)
        if key != "cost_ratio":
            run_best = np.maximum.accumulate(ys) if key == "reward" else np.minimum.accumulate(ys)
            ax.plot(x, run_best, "-", lw=1.5, label="best so far")
            ax.legend(loc="best")
        ax.set_ylabel(label)
    axes[-1].axhline(1 / space.target, color="grey", ls="--", lw=1)
    axes[-1].set_xlabel("episode")
    fig.tight_layout()
    save_png(fig, out / "search.png")
    plt.close(fig)
    names = [l.name for l in space.layers]
    fr = [1.0 if best["ranks"][n] is None else best["ranks"][n] / space.limits[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(names) + 1.5))
    ax.barh(range(len(names)), fr)
    ax.set_yticks(range(len(names)), [f"{n} ({best['ranks'][n] or 'dense'})" for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("rank kept (fraction of the layer's limit)")
    ax.set_title(f"best policy: {metric} {best['metric']:.3f}, cost {best['cost_ratio']:.3f} of dense")
    fig.tight_layout()
    save_png(fig, out / "best_ranks.png")
    plt.close(fig)
