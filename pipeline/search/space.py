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
from pipeline.lowrank.factorize import SNAP, densify, max_rank, saves_parameters, select
from pipeline.lowrank.modules import factor_basis

ENERGY_FRACTIONS = (0.125, 0.25, 0.5, 0.75)
STATE_DIM = 15
SPREAD = 3.0


def searchable(model, which="all", layer_list=None):
    """The layers a search walks, in forward order: the selected ones (default: `select(model)`, which
    leaves out the model's `keep_dense` layers) whose low-rank form can save parameters
    (`which="lstm"`: the recurrent matrices only)."""
    chosen = select(model) if layer_list is None else layer_list
    out = [l for l in chosen if saves_parameters(l.shape, SNAP) or l.rank is not None]
    if which == "lstm":
        out = [l for l in out if l.kind != "linear"]
    elif which != "all":
        raise PipelineError(f"search layers {which!r}: choose all or lstm")
    return out


class Approximator:
    """A dense twin of the model (factored layers become U V; `densify`) whose weights it sets to each
    layer's rank-r approximation: plain SVD, or whitened where `covs` holds the layer's input moment
    (pipeline.lowrank.calibration), so that a policy scores what factorize will make of it."""

    def __init__(self, model, layer_list, covs=None):
        self.twin = densify(model).eval()
        self.basis, self.original, self.params = {}, {}, {}
        for l in layer_list:
            self.params[l.name] = self._param(l)
            w = self.params[l.name].detach()
            left, right, kept = factor_basis(w, (covs or {}).get(l.name))
            self.basis[l.name] = (left.float(), right.float(), kept)
            self.original[l.name] = w.clone()

    def _param(self, layer):
        mod = self.twin.get_submodule(layer.module) if layer.module else self.twin
        return getattr(mod, layer.param)

    def energy(self, name, rank):
        """Energy kept at `rank` (1.0 dense): of the weight, or of its outputs where whitened."""
        return 1.0 if rank is None else float(self.basis[name][2][rank - 1])

    def apply(self, policy):
        """Sets every layer to its rank in the policy, the layers it does not name to their original
        weights; returns the twin (which now computes the factored model)."""
        with torch.no_grad():
            for name, (left, right, _) in self.basis.items():
                rank = policy.get(name)
                w = self.original[name] if rank is None else left[:, :rank] @ right[:rank]
                self.params[name].copy_(w)
        return self.twin


class RankSpace:
    """Walks the searched layers; turns keep fractions into ranks that fit the budget (AMC's action wall)."""

    def __init__(self, model, cost, target, min_fraction=0.1, which="all", layer_list=None):
        if target <= 1.0:
            raise PipelineError(f"target {target}: must be above 1 (a compression or speedup factor)")
        self.layers = searchable(model, which, layer_list)
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
        return np.array([i / max(1, len(self.layers) - 1), l.kind.endswith("_ih"), l.kind.endswith("_hh"),
                         l.kind == "linear", l.shape[0] / top, l.shape[1] / top, self.shares[l.name], *energy,
                         min(1.0, self.cost.total({**decided, **rest_dense}) / ref),
                         max(0.0, self.budget - self.cost.total({**decided, **rest_small})) / ref,
                         prev_action, even], dtype=np.float32)

    def uniform_action(self):
        """The largest single absolute action for every layer that meets the budget."""
        return self.even_action(0, {})
