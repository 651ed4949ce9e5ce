"""The representative evaluation subset of `dev` that the search scores policies on.

Method: stratified systematic sampling. Utterances are grouped by speaker; within a speaker they are
sorted by duration and every k-th one is taken (k = 1 / fraction, a seeded random start per
speaker), so every voice and the whole duration range are kept in proportion. The subset is then
checked: random policies (the random agent's, through the same budget wall as the search, at
targets spread over 1.5-4x) are scored on the full manifest and on the subset, and the Spearman rank correlation of the
two WER lists is stored beside the subset (`<out>.json`). Both score lists are cached
(`<out>.check-full.jsonl`, `<out>.check-subset.jsonl`), so a killed check resumes.
"""
import math
import os
from pathlib import Path

import numpy as np

from pipeline.atomic import write_jsonl
from pipeline.errors import PipelineError
from pipeline.latency.cost import CostModel
from pipeline.search.agents import RandomAgent
from pipeline.search.run import run_episode
from pipeline.search.space import Approximator, RankSpace, searchable

MAX_FRACTION = 0.15


def stratified(rows, fraction, seed=0):
    """Every k-th utterance of each speaker by duration; returns rows in manifest order."""
    if not 0 < fraction <= MAX_FRACTION:
        raise PipelineError(f"subset fraction {fraction}: must be in (0, {MAX_FRACTION}]")
    k = 1.0 / fraction
    rng = np.random.default_rng(seed)
    by_speaker = {}
    for i, r in enumerate(rows):
        by_speaker.setdefault(r.get("speaker", "?"), []).append(i)
    chosen = []
    for speaker in sorted(by_speaker):
        idx = sorted(by_speaker[speaker], key=lambda i: rows[i]["duration"])
        start = rng.uniform(0, k)
        chosen += [idx[int(start + j * k)] for j in range(math.ceil(len(idx) / k)) if int(start + j * k) < len(idx)]
    limit = int(MAX_FRACTION * len(rows))
    if len(chosen) > limit:  # per-speaker rounding up can overshoot on many small speakers
        chosen = sorted(chosen, key=lambda i: rng.random())[:limit]
    return [rows[i] for i in sorted(chosen)]


def write_subset(path, rows):
    """A manifest of `rows` (paths as read) at `path`, audio paths relative to its folder (with ../),
    so that the repository can move whole."""
    path = Path(path)
    write_jsonl(path, [{**r, "audio_filepath": os.path.relpath(r["audio_filepath"], path.resolve().parent)}
                       for r in rows])


def spearman(a, b):
    """Spearman's rho (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def random_policies(model, n, seed=0, approx=None):
    """n episodes of the random agent (relative actions, the budget wall) under the params budget of
    targets spread over 1.5-4x: the kind of policy a search compares."""
    agent, cost = RandomAgent(seed), _params_cost(model)
    approx = approx or Approximator(model, searchable(model))
    return [run_episode(RankSpace(model, cost, float(t)), agent, approx, 0)[0] for t in np.linspace(1.5, 4.0, n)]


def _params_cost(model):
    return CostModel(model, searchable(model), "params")
