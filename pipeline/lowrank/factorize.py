"""Apply per-layer ranks to a model: every LSTM matrix (per layer and direction, W_ih and W_hh
apart) and every Linear can be factorised, or factorised again to a lower rank.

Layer names: `<module path>.l<k>[_reverse].ih|hh` for LSTM matrices, `<module path>` for Linears,
e.g. `encoder.lstms.0.bwd.l0.hh`, `decoder.lstm.l0.ih`, `decoder.out`, `ctc`.
"""
import json
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.lowrank.modules import LowRankLinear, LowRankLSTM, cell_name, dense_weight

SNAP = 8


@dataclass
class Layer:
    name: str
    kind: str         # "lstm_ih", "lstm_hh" or "linear"
    shape: tuple      # (m, n) of the dense weight
    rank: int | None  # current rank; None = dense
    module: str       # path of the owning module


def _lstm_dims(mod):
    return 2 if mod.bidirectional else 1


def layers(model):
    """The compressible matrices of `model`, in forward order."""
    out = []
    for path, mod in model.named_modules():
        if isinstance(mod, (nn.LSTM, LowRankLSTM)):
            for layer in range(mod.num_layers):
                for d in range(_lstm_dims(mod)):
                    for which in ("ih", "hh"):
                        w = _lstm_matrix(mod, layer, d, which)
                        rank = getattr(w, "rank", None) if not isinstance(w, torch.Tensor) else None
                        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else w.shape
                        out.append(Layer(f"{path}.{cell_name(layer, d)}.{which}", f"lstm_{which}", shape, rank, path))
        elif isinstance(mod, nn.Linear):
            out.append(Layer(path, "linear", (mod.out_features, mod.in_features), None, path))
        elif isinstance(mod, LowRankLinear):
            out.append(Layer(path, "linear", (mod.out_features, mod.in_features), mod.rank, path))
    return out


def _lstm_matrix(mod, layer, d, which):
    if isinstance(mod, LowRankLSTM):
        return getattr(mod.cells[cell_name(layer, d)], which)
    suffix = f"_l{layer}" + ("_reverse" if d else "")
    return getattr(mod, f"weight_{which}{suffix}")


def lstm_dense(mod, layer, d, which):
    w = _lstm_matrix(mod, layer, d, which)
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


def is_output_layer(layer, model):
    """A Linear onto the vocabulary (`ctc`, `decoder.out`). Below full rank its logits lie in a
    subspace that cannot separate every character: `decoder.out` at rank 16 of 31 alone took the
    shipped baseline's dev-subset WER from 0.54 to 0.99, to save 0.2% of the parameters. Uniform
    policies and the search leave these dense; a rank spec may still name them."""
    return layer.kind == "linear" and layer.shape[0] == model.cfg.vocab_size


def uniform_ranks(model, fraction, snap=True):
    """The same rank fraction for every compressible matrix but the output layers (the hand-picked
    baseline)."""
    return parse_rank_spec({l.name: float(fraction) for l in layers(model) if not is_output_layer(l, model)
                            and (l.rank is None or round(fraction * min(l.shape)) <= l.rank)}, model, snap)


def factorize(model, ranks, init=True):
    """Replace modules in place so that each named layer has its rank; returns the model.
    init=False builds the structure only (to load a factored checkpoint's tensors into)."""
    by_module = {}
    for l in layers(model):
        if l.name in ranks and ranks[l.name] != l.rank:
            by_module.setdefault(l.module, []).append(l)
    for path, changed in by_module.items():
        mod = model.get_submodule(path)
        want = {l.name: ranks[l.name] for l in changed}
        new = _new_linear(mod, want[path], init) if changed[0].kind == "linear" else _new_lstm(mod, path, want, init)
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def _new_linear(mod, rank, init):
    w = dense_weight(mod)
    bias = mod.bias
    if init:
        return LowRankLinear.from_weight(w, bias, rank)
    return LowRankLinear(w.shape[1], w.shape[0], rank, bias is not None)


def _new_lstm(mod, path, want, init):
    dirs = _lstm_dims(mod)
    ranks = {}
    for layer in range(mod.num_layers):
        for d in range(dirs):
            r = []
            for which in ("ih", "hh"):
                name = f"{path}.{cell_name(layer, d)}.{which}"
                m = _lstm_matrix(mod, layer, d, which)
                current = None if isinstance(m, torch.Tensor) else m.rank
                r.append(want.get(name, current))
            ranks[(layer, d)] = tuple(r)
    new = LowRankLSTM(mod.input_size, mod.hidden_size, mod.num_layers, mod.bidirectional, mod.batch_first, ranks)
    if init:
        for layer in range(mod.num_layers):
            for d in range(dirs):
                cell = new.cells[cell_name(layer, d)]
                cell.ih.set_from(lstm_dense(mod, layer, d, "ih"))
                cell.hh.set_from(lstm_dense(mod, layer, d, "hh"))
                with torch.no_grad():
                    cell.bias.copy_(lstm_bias(mod, layer, d))
    return new


def current_ranks(model):
    """{layer name: rank} of the factored layers: what a factored checkpoint stores."""
    return {l.name: l.rank for l in layers(model) if l.rank is not None}


def energies(model):
    """{layer name: singular-value energy kept} of the layers factorised in this process."""
    out = {}
    for path, mod in model.named_modules():
        if isinstance(mod, LowRankLinear) and hasattr(mod, "energy"):
            out[path] = mod.energy
        elif isinstance(mod, LowRankLSTM):
            for cname, cell in mod.cells.items():
                for which in ("ih", "hh"):
                    m = getattr(cell, which)
                    if m.rank is not None and hasattr(m, "energy"):
                        out[f"{path}.{cname}.{which}"] = m.energy
    return out
