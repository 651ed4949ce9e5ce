"""The search space: the compressible layers a policy walks, what a set of ranks costs, the budget
wall that keeps every episode on target, and a dense twin of the model whose weights can be set to
any rank-r approximation in milliseconds (so each evaluation needs no re-factorisation).

A policy is {layer name: rank or None (dense)}. An absolute action in [0, 1] maps to a keep fraction
in [min_fraction, 1] of a layer's rank limit (its current rank if it is factored already, else
min(m, n)), snapped to a multiple of 8. The agents act in relative terms: 0.5 is the even fraction,
the one fraction for this layer and all after it that spends the budget still left; 0 and 1 are that
fraction divided and multiplied by SPREAD (log scale). So an untrained or random agent proposes
policies around the uniform one, and the wall rarely has to crush the last layers to their floor
(with absolute actions a random episode spent the budget early and left the decoder at 10% rank).
"""
import math

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.lowrank.factorize import SNAP, is_output_layer, layers, lstm_bias, lstm_dense, max_rank, saves_parameters
from pipeline.lowrank.modules import LowRankLinear, LowRankLSTM, dense_weight
from pipeline.model.asr import ASRModel

ENERGY_FRACTIONS = (0.125, 0.25, 0.5, 0.75)
STATE_DIM = 15
SPREAD = 3.0


def searchable(model, which="all"):
    """The layers a search walks, in forward order: every LSTM matrix and Linear whose low-rank form
    can save parameters, but the output layers (`which="lstm"`: the LSTM matrices only)."""
    out = [l for l in layers(model) if (saves_parameters(l.shape, SNAP) or l.rank is not None)
           and not is_output_layer(l, model)]
    if which == "lstm":
        out = [l for l in out if l.kind.startswith("lstm")]
    elif which != "all":
        raise PipelineError(f"search layers {which!r}: choose all or lstm")
    return out


def _weight_param(twin, name):
    """The nn.LSTM / nn.Linear parameter of `twin` that holds layer `name`'s dense weight."""
    head, _, last = name.rpartition(".")
    if last in ("ih", "hh"):
        path, _, cell = head.rpartition(".")
        layer, _, rev = cell[1:].partition("_")
        return getattr(twin.get_submodule(path), f"weight_{last}_l{layer}" + ("_reverse" if rev else ""))
    return twin.get_submodule(name).weight


def dense_twin(model):
    """A dense ASRModel computing the same function as `model` (factored layers become U V)."""
    twin = ASRModel(model.cfg)
    own = twin.state_dict()
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape},
                         strict=False)
    with torch.no_grad():
        for path, mod in model.named_modules():
            if isinstance(mod, LowRankLSTM):
                target = twin.get_submodule(path)
                for layer in range(mod.num_layers):
                    for d in range(2 if mod.bidirectional else 1):
                        suffix = f"_l{layer}" + ("_reverse" if d else "")
                        for which in ("ih", "hh"):
                            getattr(target, f"weight_{which}{suffix}").copy_(lstm_dense(mod, layer, d, which))
                        getattr(target, f"bias_ih{suffix}").copy_(lstm_bias(mod, layer, d))
                        getattr(target, f"bias_hh{suffix}").zero_()
            elif isinstance(mod, LowRankLinear):
                twin.get_submodule(path).weight.copy_(dense_weight(mod))
    return twin.eval()


class Approximator:
    """Sets the dense twin's weights to the rank-r SVD approximation of each layer's weight."""

    def __init__(self, model, layer_list):
        self.twin = dense_twin(model)
        self.svd, self.original = {}, {}
        for l in layer_list:
            w = _weight_param(self.twin, l.name).detach()
            p, s, qt = torch.linalg.svd(w.double(), full_matrices=False)
            self.svd[l.name] = ((p * s).float(), qt.float(), (s ** 2).cumsum(0) / (s ** 2).sum().clamp_min(1e-30))
            self.original[l.name] = w.clone()

    def energy(self, name, rank):
        """Singular-value energy kept at `rank` (1.0 dense)."""
        return 1.0 if rank is None else float(self.svd[name][2][rank - 1])

    def apply(self, policy):
        """Sets every layer to its rank in the policy, the layers it does not name to their original
        weights; returns the twin (which now computes the factored model)."""
        with torch.no_grad():
            for name, (ps, qt, _) in self.svd.items():
                rank = policy.get(name)
                w = self.original[name] if rank is None else ps[:, :rank] @ qt[:rank]
                _weight_param(self.twin, name).copy_(w)
        return self.twin


class RankSpace:
    """Walks the searched layers; turns keep fractions into ranks that fit the budget (AMC's action wall)."""

    def __init__(self, model, cost, target, min_fraction=0.1, which="all"):
        if target <= 1.0:
            raise PipelineError(f"target {target}: must be above 1 (a compression or speedup factor)")
        self.layers = searchable(model, which)
        if not self.layers:
            raise PipelineError("the model has no layer that a low-rank form could shrink")
        self.cost, self.target, self.min_fraction = cost, target, min_fraction
        self.limits = {l.name: max_rank(l) for l in self.layers}
        self.budget = cost.reference / target
        self.smallest = {l.name: self.rank_of(l, 0.0) for l in self.layers}
        floor = cost.total(self.smallest)
        if floor > self.budget:
            raise PipelineError(f"target {target:g}x is out of reach: at the smallest ranks (fraction "
                                f"{min_fraction:g}) the cost is {cost.reference / floor:.2f}x below the dense model's")
        self.shares = {l.name: (cost.reference - cost.total({l.name: self.smallest[l.name]})) / cost.reference
                       for l in self.layers}

    def rank_of(self, layer, action):
        """Rank for an action in [0, 1], which maps linearly to a keep fraction in [min_fraction, 1] of
        the layer's limit; snapped to a multiple of 8; None (dense) where a dense layer's factors
        would not save parameters."""
        limit = self.limits[layer.name]
        f = self._fraction(min(1.0, max(0.0, action)))
        rank = limit if f >= 1.0 else min(limit, max(SNAP, SNAP * round(f * limit / SNAP)))
        if layer.rank is None and not saves_parameters(layer.shape, rank):
            return None
        return rank

    def action_of(self, layer, rank):
        """The action a rank corresponds to (what the agent learns from after the wall)."""
        return self._action(self._kept(layer, rank))

    def even_action(self, i, decided):
        """The largest single absolute action for layers i.. that, with `decided`, meets the budget."""
        rest = self.layers[i:]
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.cost.total({**decided, **{l.name: self.rank_of(l, mid) for l in rest}}) <= self.budget:
                lo = mid
            else:
                hi = mid
        return lo

    def _kept(self, layer, rank):
        """The keep fraction of a rank (1 for dense)."""
        return 1.0 if rank is None else rank / self.limits[layer.name]

    def _fraction(self, action):
        return self.min_fraction + (1.0 - self.min_fraction) * action

    def _action(self, fraction):
        """The absolute action of a keep fraction (its inverse), clipped to [0, 1]."""
        return min(1.0, max(0.0, (fraction - self.min_fraction) / (1.0 - self.min_fraction)))

    def absolute(self, relative, even):
        """The absolute action of a relative one, given the even absolute action."""
        return self._action(self._fraction(even) * SPREAD ** (2.0 * relative - 1.0))

    def relative(self, layer, rank, even):
        """The relative action that a rank corresponds to (what the agent learns from after the wall)."""
        return min(1.0, max(0.0, 0.5 + np.log(self._kept(layer, rank) / self._fraction(even)) / (2.0 * np.log(SPREAD))))

    def candidates(self, layer):
        """Every distinct rank the layer can take, smallest first (None = dense last)."""
        ranks = {self.rank_of(layer, k / 128) for k in range(129)}
        return sorted(ranks, key=lambda r: math.inf if r is None else r)

    def wall(self, i, decided, rank):
        """The largest candidate rank <= `rank` (None: dense, the largest) for layer i such that the
        budget stays reachable with every later layer at its smallest rank."""
        layer = self.layers[i]
        rest = {l.name: self.smallest[l.name] for l in self.layers[i + 1:]}
        for r in reversed(self.candidates(layer)):
            if rank is not None and (r is None or r > rank):
                continue
            if self.cost.total({**decided, layer.name: r, **rest}) <= self.budget * (1 + 1e-9):
                return r
        return self.smallest[layer.name]

    def state(self, i, decided, prev_action, approx, even):
        """Features of layer i given the ranks decided so far and the even action, each in [0, 1]."""
        l = self.layers[i]
        top = max(max(x.shape) for x in self.layers)
        rest_dense = {x.name: None for x in self.layers[i:]}
        rest_small = {x.name: self.smallest[x.name] for x in self.layers[i:]}
        ref = self.cost.reference
        limit = self.limits[l.name]
        energy = [approx.energy(l.name, max(1, round(f * limit))) for f in ENERGY_FRACTIONS]
        return np.array([i / max(1, len(self.layers) - 1), l.kind == "lstm_ih", l.kind == "lstm_hh",
                         l.kind == "linear", l.shape[0] / top, l.shape[1] / top, self.shares[l.name], *energy,
                         min(1.0, self.cost.total({**decided, **rest_dense}) / ref),
                         max(0.0, self.budget - self.cost.total({**decided, **rest_small})) / ref,
                         prev_action, even], dtype=np.float32)

    def uniform_action(self):
        """The largest single absolute action for every layer that meets the budget."""
        return self.even_action(0, {})
