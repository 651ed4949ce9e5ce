"""Apply per-layer ranks to any model: every matrix of an nn.LSTM (per layer and direction, W_ih,
W_hh and the projection W_hr apart), nn.GRU, nn.LSTMCell, nn.GRUCell and nn.Linear can be
factorised, or factorised again to a lower rank.

Layer names: `<module path>.l<k>[_reverse].ih|hh|hr` for LSTM and GRU matrices, `<module path>.ih|hh`
for cells, `<module path>` for Linears, e.g. `encoder.lstms.0.bwd.l0.hh`, `decoder.out`, `rnn.l1.hr`.
A model may name module-path globs that stay dense unless a rank spec names them (`keep_dense`).
"""
import copy
import fnmatch
import json
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.lowrank.modules import RECURRENT, LowRankLinear, LowRankLSTM, LowRankRecurrent, cell_name, dense_module

SNAP = 8
TYPES = ("Linear", "LSTM", "GRU", "LSTMCell", "GRUCell")


@dataclass
class Layer:
    name: str
    kind: str         # "<lstm|gru>_<ih|hh|hr>" or "linear"
    shape: tuple      # (m, n) of the dense weight
    rank: int | None  # current rank; None = dense
    module: str       # path of the owning module
    param: str = "weight"  # the dense weight's name on the PyTorch module, e.g. "weight_hh_l0_reverse"
    type: str = "Linear"   # the PyTorch class the module is or stands in for


def type_name(mod):
    """The PyTorch class name a compressible module is or stands in for, else None."""
    if isinstance(mod, (nn.Linear, LowRankLinear)):
        return "Linear"
    if isinstance(mod, LowRankLSTM):
        return "LSTM"
    if isinstance(mod, LowRankRecurrent):
        return mod.original.__name__
    if isinstance(mod, RECURRENT):
        return type(mod).__name__
    return None


def _matrices(mod):
    """(name suffix, kind, parameter name, weight tensor or factored matrix) of each matrix of a module."""
    kind = type_name(mod)
    if kind == "Linear":
        yield "", "linear", "weight", mod
        return
    family = "gru" if kind.startswith("GRU") else "lstm"
    if kind.endswith("Cell"):
        for which in ("ih", "hh"):
            yield f".{which}", f"{family}_{which}", f"weight_{which}", _weight(mod, f"weight_{which}")
        return
    for layer in range(mod.num_layers):
        for d in range(2 if mod.bidirectional else 1):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            for which in ("ih", "hh") + (("hr",) if getattr(mod, "proj_size", 0) else ()):
                w = getattr(mod.cells[cell_name(layer, d)], which) if isinstance(mod, LowRankLSTM) \
                    else _weight(mod, f"weight_{which}{sfx}")
                yield f".{cell_name(layer, d)}.{which}", f"{family}_{which}", f"weight_{which}{sfx}", w


def _weight(mod, param):
    return mod.matrices[param] if isinstance(mod, LowRankRecurrent) else getattr(mod, param)


def layers(model):
    """The compressible matrices of `model`, in the order of its modules."""
    out = []
    for path, mod in model.named_modules():
        kind = type_name(mod)
        if kind is None:
            continue
        for suffix, k, param, w in _matrices(mod):
            if isinstance(w, nn.Linear):
                shape, rank = (w.out_features, w.in_features), None
            elif isinstance(w, LowRankLinear):
                shape, rank = (w.out_features, w.in_features), w.rank
            elif isinstance(w, torch.Tensor):
                shape, rank = tuple(w.shape), None
            else:
                shape, rank = w.shape, w.rank
            out.append(Layer(path + suffix, k, shape, rank, path, param, kind))
    return out


def select(model, include=None, exclude=(), types=None, where="layers"):
    """The layers of `model` chosen as NNI's config_list chooses: module-path or layer-name globs to
    include (default all) and exclude, and PyTorch class names (`types`, default all of TYPES). The
    model's own `keep_dense` globs are excluded too. A glob or type that matches nothing is an error."""
    every = layers(model)
    if not every:
        raise PipelineError(f"{where}: the model has no compressible layer (nn.Linear, nn.LSTM, nn.GRU, "
                            f"nn.LSTMCell, nn.GRUCell)")
    for t in types or ():
        if t not in TYPES:
            raise PipelineError(f"{where}: type {t!r} is not one of {', '.join(TYPES)}")
    hit = lambda l, g: fnmatch.fnmatchcase(l.name, g) or fnmatch.fnmatchcase(l.module, g)
    for label, globs in (("include", include or ()), ("exclude", exclude or ())):
        for g in globs:
            if not any(hit(l, g) for l in every):
                raise PipelineError(f"{where}: {label} glob {g!r} matches no layer (layers: "
                                    f"{', '.join(l.name for l in every[:6])}{' ...' if len(every) > 6 else ''})")
    dense = tuple(getattr(model, "keep_dense", ()))
    out = [l for l in every if (include is None or any(hit(l, g) for g in include))
           and not any(hit(l, g) for g in (*exclude, *dense)) and (types is None or l.type in types)]
    if not out:
        raise PipelineError(f"{where}: the selection leaves no layer to compress")
    return out


def lstm_dense(mod, layer, d, which):
    """The dense W_ih or W_hh of one layer and direction of an nn.LSTM or LowRankLSTM."""
    w = getattr(mod.cells[cell_name(layer, d)], which) if isinstance(mod, LowRankLSTM) else \
        getattr(mod, f"weight_{which}_l{layer}" + ("_reverse" if d else ""))
    return w if isinstance(w, torch.Tensor) else w.dense()


def lstm_bias(mod, layer, d):
    if isinstance(mod, LowRankLSTM):
        return mod.cells[cell_name(layer, d)].bias
    suffix = f"_l{layer}" + ("_reverse" if d else "")
    return getattr(mod, f"bias_ih{suffix}") + getattr(mod, f"bias_hh{suffix}")


def max_rank(layer):
    return layer.rank if layer.rank is not None else min(layer.shape)


def saves_parameters(shape, rank):
    m, n = shape
    return rank * (m + n) < m * n


def parse_rank_spec(spec, model, snap=True, where="rank spec", keep_unprofitable=False):
    """{layer name: rank | fraction | "dense"} -> {layer name: int rank or None (dense)}, validated.
    Ranks snap to a multiple of 8 unless snap=False; a layer whose factors would not save
    parameters stays dense. Layers not named keep their current form."""
    if not isinstance(spec, dict):
        raise PipelineError(f"{where}: expected a JSON object mapping layer names to ranks")
    by_name = {l.name: l for l in layers(model)}
    out = {}
    for name, value in spec.items():
        if name not in by_name:
            close = [n for n in by_name if name.split(".")[-1] in n][:3]
            raise PipelineError(f"{where}: unknown layer '{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        layer = by_name[name]
        limit = max_rank(layer)
        if value == "dense":
            if layer.rank is not None:
                raise PipelineError(f"{where}: layer '{name}' is factored already (rank {layer.rank}); it cannot become dense")
            out[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"{where}: layer '{name}': rank must be an integer, a fraction or \"dense\", got {value!r}")
        if isinstance(value, float):
            if not 0.0 < value <= 1.0:
                raise PipelineError(f"{where}: layer '{name}': fraction {value} is outside (0, 1]")
            rank = max(1, round(value * min(layer.shape)))
        else:
            rank = value
            if rank <= 0:
                raise PipelineError(f"{where}: layer '{name}': rank {rank} must be at least 1")
        if rank > limit:
            raise PipelineError(f"{where}: layer '{name}': rank {rank} is above its limit {limit}")
        if snap:
            rank = min(limit, max(SNAP, SNAP * round(rank / SNAP)))
        profitable = saves_parameters(layer.shape, rank) or layer.rank is not None
        out[name] = rank if profitable or keep_unprofitable else None
    return out


def load_rank_spec(path, model, snap=True):
    try:
        spec = json.loads(open(path, encoding="utf-8").read())
    except OSError as e:
        raise PipelineError(f"{path}: cannot read rank spec ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    return parse_rank_spec(spec, model, snap, where=str(path))


def uniform_ranks(model, fraction, snap=True, layer_list=None):
    """The same rank fraction for every selected matrix (default: `select(model)`, which leaves out
    the model's `keep_dense` layers): the hand-picked baseline."""
    chosen = select(model) if layer_list is None else layer_list
    return parse_rank_spec({l.name: float(fraction) for l in chosen
                            if l.rank is None or round(fraction * min(l.shape)) <= l.rank}, model, snap)


def factorize(model, ranks, init=True, covs=None):
    """Replace modules in place so that each named layer has its rank; returns the model (a new
    module where the model is itself one layer, e.g. a bare nn.LSTM).
    init=False builds the structure only (to load a factored checkpoint's tensors into).
    covs: {layer name: its inputs' second moment} (pipeline.lowrank.calibration): those layers get
    the whitened factorisation, the others plain SVD."""
    covs = covs or {}
    by_module = {}
    for l in layers(model):
        if l.name in ranks and ranks[l.name] != l.rank:
            by_module.setdefault(l.module, []).append(l)
    for path, changed in by_module.items():
        mod = model.get_submodule(path)
        want = {l.name: ranks[l.name] for l in changed}
        if changed[0].kind == "linear":
            new = _new_linear(mod, want[path], init, covs.get(path))
        elif isinstance(mod, LowRankLSTM) or (isinstance(mod, nn.LSTM) and not mod.proj_size and mod.bias):
            new = _new_lstm(mod, path, want, init, covs)
        else:
            have = {l.param: l.rank for l in layers(mod)}
            new = LowRankRecurrent.from_module(mod, {**have, **{l.param: want[l.name] for l in changed}}, init,
                                               {l.param: covs[l.name] for l in changed if l.name in covs})
        model = put_module(model, path, new)
    return model


def put_module(model, path, new):
    """`model` with its submodule at `path` replaced by `new` (in place); `new` itself where the
    path is empty (the model is that module)."""
    if not path:
        return new
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def _new_linear(mod, rank, init, cov=None):
    w = mod.weight if isinstance(mod, nn.Linear) else mod.dense_weight()
    bias = mod.bias
    if init:
        return LowRankLinear.from_weight(w, bias, rank, cov)
    return LowRankLinear(w.shape[1], w.shape[0], rank, bias is not None)


def _new_lstm(mod, path, want, init, covs):
    """A LowRankLSTM (its factored inference path is what the ONNX and native exporters lower)."""
    dirs = 2 if mod.bidirectional else 1
    have = {l.name: l.rank for l in layers(mod)}
    ranks = {(layer, d): tuple(want.get(f"{path}.{cell_name(layer, d)}.{w}", have[f".{cell_name(layer, d)}.{w}"])
                               for w in ("ih", "hh"))
             for layer in range(mod.num_layers) for d in range(dirs)}
    new = LowRankLSTM(mod.input_size, mod.hidden_size, mod.num_layers, mod.bidirectional, mod.batch_first, ranks)
    if init:
        for layer in range(mod.num_layers):
            for d in range(dirs):
                cell, name = new.cells[cell_name(layer, d)], f"{path}.{cell_name(layer, d)}"
                cell.ih.set_from(lstm_dense(mod, layer, d, "ih"), covs.get(f"{name}.ih"))
                cell.hh.set_from(lstm_dense(mod, layer, d, "hh"), covs.get(f"{name}.hh"))
                with torch.no_grad():
                    cell.bias.copy_(lstm_bias(mod, layer, d))
    return new


def densify(model):
    """A copy of `model` with every factored module replaced by the plain PyTorch module that
    computes the same function (weights U V): the search's dense twin."""
    twin = copy.deepcopy(model)
    for path, mod in list(twin.named_modules()):
        dense = dense_module(mod)
        if dense is not None:
            twin = put_module(twin, path, dense)
    return twin


def current_ranks(model):
    """{layer name: rank} of the factored layers: what a factored checkpoint stores."""
    return {l.name: l.rank for l in layers(model) if l.rank is not None}


def energies(model):
    """{layer name: singular-value energy kept} of the layers factorised in this process."""
    out = {}
    for path, mod in model.named_modules():
        if type_name(mod) is None:
            continue
        for suffix, _, _, w in _matrices(mod):
            if getattr(w, "rank", None) is not None and hasattr(w, "energy"):
                out[path + suffix] = w.energy
    return out
