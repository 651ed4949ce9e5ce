"""Layer-wise recovery: after a cut, each factored module is trained on its own to reproduce what
the uncompressed module outputs, on inputs cached from a calibration run: no labels, no decoder, no
backward pass through the whole model.

Modules are taken in forward order. Module k reads the inputs that the model, with modules before k
already recovered, gives it (so it learns to undo the errors upstream too), and is taught the
uncompressed model's outputs of the same call. A module that the two runs do not call alike (a
decoder whose greedy output differs, so its step count does) is left as it is: taught on the
uncompressed model's own inputs instead, the recogniser's decoder came out worse in a trial.
"""
import random

import torch
from torch.nn.utils.rnn import PackedSequence
from tqdm import tqdm

from pipeline.lowrank.factorize import layers


def factored_modules(model):
    """Paths of the modules holding a factored matrix, in the order of named_modules."""
    paths = {l.module for l in layers(model) if l.rank is not None}
    return [p for p, _ in model.named_modules() if p in paths]


def recover(teacher, model, run, steps=200, lr=1e-3, seed=0, progress=True):
    """Trains every factored module of `model` (in place) toward the matching module of `teacher`
    (the model it was cut from: same module paths); `run(m)` runs a model on calibration data.
    Returns {module path: {"error_before", "error_after"} (relative to the teacher's output energy)
    or {"skipped": why}}."""
    paths = factored_modules(model)
    wanted = _record(teacher, paths, run)
    rng, report = random.Random(seed), {}
    for path in tqdm(paths, desc="layer-wise recovery", unit="module", disable=not progress):
        mod = model.get_submodule(path) if path else model
        own = _record(model, [path], run)[path]
        target = wanted[path]
        aligned = len(own) == len(target) and all(_main(a[2]).shape == _main(b[2]).shape for a, b in zip(own, target))
        if not aligned:
            report[path] = {"skipped": f"called {len(own)} times, the uncompressed model's {len(target)} times"}
            continue
        calls = [(a[0], a[1], b[2]) for a, b in zip(own, target)]
        before = _error(mod, calls)
        opt = torch.optim.Adam(mod.parameters(), lr=lr)
        order = []
        mod.train()  # a factored LSTM trains on its fused path (the same function, far faster)
        for _ in range(steps):
            if not order:
                order = rng.sample(range(len(calls)), len(calls))
            args, kwargs, out = calls[order.pop()]
            loss = _loss(mod(*args, **kwargs), out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        mod.eval()
        report[path] = {"error_before": before, "error_after": _error(mod, calls)}
    return report


def _record(model, paths, run):
    """{path: [(args, kwargs, output)]} of every call of those modules while run(model) runs."""
    calls = {p: [] for p in paths}
    hooks = [(model.get_submodule(p) if p else model).register_forward_hook(
        lambda m, a, k, o, p=p: calls[p].append((a, k, o)), with_kwargs=True) for p in paths]
    try:
        with torch.no_grad():
            run(model.eval())
    finally:
        for h in hooks:
            h.remove()
    return calls


def _main(out):
    """The output that later modules read: the sequence of an RNN, h of a cell, a Linear's output."""
    if isinstance(out, tuple):
        out = out[0]
    return out.data if isinstance(out, PackedSequence) else out


def _loss(out, target):
    t = _main(target)
    return (_main(out) - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)


def _error(mod, calls):
    with torch.no_grad():
        mod.eval()
        num = sum(float((_main(mod(*a, **k)) - _main(o)).pow(2).sum()) for a, k, o in calls)
        den = sum(float(_main(o).pow(2).sum()) for _, _, o in calls)
    return num / max(den, 1e-12)
