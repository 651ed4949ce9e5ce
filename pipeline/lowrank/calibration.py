"""The inputs each compressible matrix really sees, for the data-aware (whitened) factorisation.

`calibrate(model, layer_list, run)` hooks the modules that own the layers, calls `run()` (which
runs the model on calibration data: a few hundred training utterances, a stretch of training
text), and returns per layer the second moment C = E[x x^T] of its inputs x: for a Linear its input;
for an LSTM or GRU, per layer and direction, the sequence that layer reads for W_ih and its hidden
states for W_hh (the initial state given, then its outputs); for a cell, its input and its h.
A layer whose statistics are degenerate (never reached, too few rows for its width, non-finite,
all zero) is left to plain SVD, and the calibration says why. A projection W_hr of an LSTM with
`proj_size` reads the unprojected h, which no hook sees: it is factored by plain SVD too.
"""
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from pipeline.lowrank.factorize import type_name
from pipeline.lowrank.modules import dense_module

RIDGE = 1e-3  # C + RIDGE * tr(C) / n * I: input directions never seen still count a little
METHODS = ("svd", "whitened")


@dataclass
class Calibration:
    covs: dict = field(default_factory=dict)      # layer name -> ridged second moment (n x n, float64)
    rows: dict = field(default_factory=dict)      # layer name -> input vectors seen
    fallback: dict = field(default_factory=dict)  # layer name -> why it is factored by plain SVD

    def record(self):
        """What a factored checkpoint says of the method that made it."""
        return {"method": "whitened", "ridge": RIDGE, "rows": self.rows, "fallback": self.fallback}


def calibrate(model, layer_list, run, min_rows=None):
    """The Calibration of `layer_list`'s inputs while `run()` runs `model` (in eval mode, no grad).
    min_rows: fewest input vectors for a usable moment (default: the input width)."""
    sums, counts = {}, {}
    by_module = {}
    for l in layer_list:
        by_module.setdefault(l.module, []).append(l)

    def add(name, x):
        x = x.detach().reshape(-1, x.shape[-1]).float()
        sums[name] = sums.get(name, 0) + (x.t() @ x).double()
        counts[name] = counts.get(name, 0) + x.shape[0]

    hooks = []
    for path, chosen in by_module.items():
        mod = model.get_submodule(path) if path else model
        names = {l.param: l.name for l in chosen}

        def hook(mod, args, kwargs, out, names=names):
            for param, x in _inputs(mod, args, kwargs, out):
                if param in names:
                    add(names[param], x)

        hooks.append(mod.register_forward_hook(hook, with_kwargs=True))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            run()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = Calibration()
    for l in layer_list:
        n, rows = l.shape[1], counts.get(l.name, 0)
        out.rows[l.name] = rows
        reason = _degenerate(sums.get(l.name), rows, min_rows or n, l.kind)
        if reason:
            out.fallback[l.name] = reason
            continue
        c = sums[l.name] / rows
        out.covs[l.name] = c + RIDGE * torch.trace(c) / n * torch.eye(n, dtype=c.dtype)
    return out


def _degenerate(total, rows, min_rows, kind):
    if kind.endswith("_hr"):
        return "a projection's inputs are not observable"
    if total is None or rows == 0:
        return "no calibration input reached it"
    if rows < min_rows:
        return f"{rows} input vectors, fewer than its {min_rows} inputs"
    if not bool(torch.isfinite(total).all()):
        return "non-finite inputs"
    if float(torch.trace(total)) <= 0:
        return "all-zero inputs"
    return None


def _inputs(mod, args, kwargs, out):
    """(weight name, inputs it multiplies) of one call of a compressible module."""
    kind = type_name(mod)
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if kind == "Linear":
        return [("weight", x)]
    if kind.endswith("Cell"):
        h = hx[0] if isinstance(hx, tuple) else hx
        return [("weight_ih", x)] + ([("weight_hh", h)] if h is not None else [])
    return _sequence_inputs(mod, x, hx, out)


def _sequence_inputs(mod, x, hx, out):
    """Per layer and direction of an LSTM or GRU: what W_ih and W_hh read. Layers past the first are
    run again one at a time on the dense weights (a hook sees the module's input and output only)."""
    dirs = 2 if mod.bidirectional else 1
    width = (getattr(mod, "proj_size", 0) or mod.hidden_size)
    rows = lambda t: t.data if isinstance(t, PackedSequence) else t
    h0 = hx[0] if isinstance(hx, tuple) else hx
    # Only a multi-layer module is run again; a factored one on its dense copy, made once per call.
    dense = mod if mod.num_layers == 1 or type(mod) in (nn.LSTM, nn.GRU) else dense_module(mod)
    found, layer_in = [], x
    for layer in range(mod.num_layers):
        layer_out = out[0] if layer == mod.num_layers - 1 else _one_layer(dense, layer)(layer_in, _state(hx, layer, dirs))[0]
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            found.append((f"weight_ih{sfx}", rows(layer_in)))
            found.append((f"weight_hh{sfx}", rows(layer_out)[..., d * width:(d + 1) * width]))
            if h0 is not None:
                found.append((f"weight_hh{sfx}", h0[layer * dirs + d]))
        layer_in = layer_out
    return found


def _state(hx, layer, dirs):
    if hx is None:
        return None
    pick = lambda t: t[layer * dirs:(layer + 1) * dirs]
    return tuple(pick(t) for t in hx) if isinstance(hx, tuple) else pick(hx)


def _one_layer(mod, layer):
    """Layer `layer` of a multi-layer nn.LSTM or nn.GRU as a module of its own."""
    kw = {"bias": mod.bias, "batch_first": mod.batch_first, "bidirectional": mod.bidirectional}
    if isinstance(mod, nn.LSTM):
        kw["proj_size"] = mod.proj_size
    n_in = mod.input_size if layer == 0 else (mod.proj_size if getattr(mod, "proj_size", 0) else mod.hidden_size) * \
        (2 if mod.bidirectional else 1)
    one = type(mod)(n_in, mod.hidden_size, 1, **kw)
    with torch.no_grad():
        for name, p in one.named_parameters():
            p.copy_(getattr(mod, name.replace("_l0", f"_l{layer}")))
    return one.eval()
