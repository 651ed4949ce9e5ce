"""Low-rank drop-ins for `nn.Linear`, `nn.LSTM`, `nn.GRU`, `nn.LSTMCell` and `nn.GRUCell`:
W (m x n) ~= U (m x r) V (r x n), from a truncated SVD.

Singular values are split as sqrt(S) into both factors, so U and V have the same scale and
fine-tune evenly. A factor pair can be factorised again to a lower rank (SVD of U V).
"""
import torch
from torch import _VF, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from pipeline.model.asr import reverse_padded


def factor_basis(w, cov=None):
    """(left m x k, right k x n, energy kept at each rank 1..k) such that left[:, :r] @ right[:r] is
    the best rank-r approximation of `w`: in ||w - w_r|| (cov None: plain SVD), or in
    E||(w - w_r) x||^2 over inputs x whose second moment E[x x^T] is `cov` (whitened: the SVD of w S
    with S S^T = cov; its rank-r form is P_r P_r^T w, the output's r principal directions, so no
    inverse of S is taken and a singular cov needs no special case). Energy: the share of ||w||^2,
    or of the outputs' E||w x||^2, that rank r keeps."""
    w64 = w.detach().double()
    if cov is None:
        p, s, qt = torch.linalg.svd(w64, full_matrices=False)
        return p * s, qt, _kept(s)
    lam, e = torch.linalg.eigh(cov.double())
    p, s, _ = torch.linalg.svd(w64 @ (e * lam.clamp_min(0).sqrt()), full_matrices=False)
    return p, p.t() @ w64, _kept(s)


def _kept(s):
    return (s ** 2).cumsum(0) / (s ** 2).sum().clamp_min(1e-30)


def svd_factors(w, rank, cov=None):
    """(U, V) with U V the best rank-`rank` approximation of `w` (see factor_basis), and the energy
    kept (0..1). The singular values of U V are split as sqrt into both factors."""
    if cov is None:
        p, s, qt = torch.linalg.svd(w.detach().double(), full_matrices=False)
        root = s[:rank].sqrt()
        return (p[:, :rank] * root).to(w.dtype), (root[:, None] * qt[:rank]).to(w.dtype), float(_kept(s)[rank - 1])
    left, right, kept = factor_basis(w, cov)
    a, s, bt = torch.linalg.svd(right[:rank], full_matrices=False)  # left's columns are orthonormal
    root = s.sqrt()
    return ((left[:, :rank] @ a) * root).to(w.dtype), (root[:, None] * bt).to(w.dtype), float(kept[rank - 1])


class LowRankLinear(nn.Module):
    """y = U (V x) + b, drop-in for nn.Linear(in_features, out_features)."""

    def __init__(self, in_features, out_features, rank, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.V = nn.Parameter(torch.empty(rank, in_features))
        self.U = nn.Parameter(torch.empty(out_features, rank))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.V, std=in_features ** -0.5)
        nn.init.normal_(self.U, std=rank ** -0.5)

    def dense_weight(self):
        return self.U @ self.V

    def forward(self, x):
        y = (x @ self.V.t()) @ self.U.t()
        return y if self.bias is None else y + self.bias

    @classmethod
    def from_weight(cls, weight, bias, rank, cov=None):
        m = cls(weight.shape[1], weight.shape[0], rank, bias is not None)
        u, v, m.energy = svd_factors(weight, rank, cov)
        with torch.no_grad():
            m.U.copy_(u)
            m.V.copy_(v)
            if bias is not None:
                m.bias.copy_(bias)
        return m

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


def dense_weight(module):
    """The (out x in) weight of a Linear or LowRankLinear."""
    return module.weight if isinstance(module, nn.Linear) else module.dense_weight()


class _Matrix(nn.Module):
    """One LSTM weight matrix (4H x n), dense (`weight`) or factored (`U` 4H x r, `V` r x n)."""

    def __init__(self, out_f, in_f, rank=None):
        super().__init__()
        self.shape, self.rank = (out_f, in_f), rank
        if rank is None:
            self.weight = nn.Parameter(torch.empty(out_f, in_f))
        else:
            self.U = nn.Parameter(torch.empty(out_f, rank))
            self.V = nn.Parameter(torch.empty(rank, in_f))

    def dense(self):
        return self.weight if self.rank is None else self.U @ self.V

    def apply(self, x):
        """x (..., n) -> x W^T (..., 4H): one GEMM dense, two GEMMs through the rank factored."""
        if self.rank is None:
            return x @ self.weight.t()
        return (x @ self.V.t()) @ self.U.t()

    def set_from(self, w, cov=None):
        """The dense `w`, or its best rank-r approximation (in the inputs' metric where `cov` is given)."""
        with torch.no_grad():
            if self.rank is None:
                self.weight.copy_(w)
                self.energy = 1.0
            else:
                u, v, self.energy = svd_factors(w, self.rank, cov)
                self.U.copy_(u)
                self.V.copy_(v)


class LowRankLSTM(nn.Module):
    """Drop-in for nn.LSTM (same inputs, outputs and states; bidirectional; padded or packed batches)
    whose input matrix W_ih and recurrent matrix W_hh of each layer and direction are each dense or
    factored with their own rank. `ranks[(layer, direction)] = (rank_ih, rank_hh)`, None = dense."""

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False, batch_first=False, ranks=None):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional, self.batch_first = bidirectional, batch_first
        ranks = ranks or {}
        dirs = 2 if bidirectional else 1
        self.cells = nn.ModuleDict()
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else hidden_size * dirs
            for d in range(dirs):
                r_ih, r_hh = ranks.get((layer, d), (None, None))
                cell = nn.Module()
                cell.ih = _Matrix(4 * hidden_size, n_in, r_ih)
                cell.hh = _Matrix(4 * hidden_size, hidden_size, r_hh)
                cell.bias = nn.Parameter(torch.zeros(4 * hidden_size))  # b_ih + b_hh
                self.cells[cell_name(layer, d)] = cell

    def dense_weights(self):
        """[(W_ih, W_hh, bias)] per layer and direction, in nn.LSTM's order: the products U V, inside
        the autograd graph, so gradients reach the factors."""
        dirs = 2 if self.bidirectional else 1
        return [(cell.ih.dense(), cell.hh.dense(), cell.bias)
                for cell in (self.cells[cell_name(layer, d)] for layer in range(self.num_layers) for d in range(dirs))]

    def forward(self, x, hx=None):
        if self.training and not isinstance(x, PackedSequence):
            return self._fused(x, hx)
        packed = isinstance(x, PackedSequence)
        if packed:
            sorted_idx = x.sorted_indices
            x, lengths = pad_packed_sequence(x, batch_first=True)
        else:
            if not self.batch_first:
                x = x.transpose(0, 1)
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        dirs = 2 if self.bidirectional else 1
        b = x.shape[0]
        if hx is None:
            z = x.new_zeros(self.num_layers * dirs, b, self.hidden_size)
            hx = (z, z)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                y, h, c = self._run(self.cells[cell_name(layer, d)], x, lengths, hx[0][k], hx[1][k], reverse=d == 1)
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, dim=2) if dirs == 2 else outs[0]
        state = (torch.stack(h_n), torch.stack(c_n))
        if packed:
            out = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            return PackedSequence(out.data, out.batch_sizes, sorted_idx, out.unsorted_indices), state
        return (x if self.batch_first else x.transpose(0, 1)), state

    def _fused(self, x, hx):
        """Training: PyTorch's fused LSTM on W = U V (the same function as the factored steps, several
        times faster to train than stepping in Python; inference keeps the factored products)."""
        flat = [t for w_ih, w_hh, b in self.dense_weights() for t in (w_ih, w_hh, b, torch.zeros_like(b))]
        if hx is None:
            z = x.new_zeros(self.num_layers * (2 if self.bidirectional else 1), x.shape[0 if self.batch_first else 1],
                            self.hidden_size)
            hx = (z, z)
        out, h, c = _VF.lstm(x, hx, flat, True, self.num_layers, 0.0, True, self.bidirectional, self.batch_first)
        return out, (h, c)

    @staticmethod
    def _run(cell, x, lengths, h, c, reverse):
        t_max = x.shape[1]
        if reverse:
            x = reverse_padded(x, lengths)
        xp = cell.ih.apply(x) + cell.bias  # the input projection of all frames at once
        valid = (torch.arange(t_max)[None, :] < lengths[:, None]).to(x.dtype)[:, :, None]
        outs = []
        for t in range(t_max):
            gates = xp[:, t] + cell.hh.apply(h)
            i, f, g, o = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            m = valid[:, t]
            c = m * c_new + (1 - m) * c
            h = m * h_new + (1 - m) * h
            outs.append(h_new * m)
        y = torch.stack(outs, dim=1) if outs else x.new_zeros(x.shape[0], 0, h.shape[1])
        if reverse:
            y = reverse_padded(y, lengths)
        return y, h, c


def cell_name(layer, direction):
    return f"l{layer}" + ("_reverse" if direction == 1 else "")


RECURRENT = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)


class LowRankRecurrent(nn.Module):
    """Drop-in for an nn.LSTM (any proj_size, bias, dropout), nn.GRU, nn.LSTMCell or nn.GRUCell whose
    weight matrices are each dense or factored. PyTorch's own module runs on the products U V: it is
    kept on the meta device (no memory, not a submodule) and called with them (torch.func), so the
    inputs, outputs, states, packing and error messages are the original's exactly.
    `ranks[weight name] = rank` (e.g. "weight_hh_l0_reverse"), None or absent = dense."""

    def __init__(self, shell, ranks=None):
        super().__init__()
        self.__dict__["shell"] = shell.to("meta")
        ranks = ranks or {}
        self.matrices, self.biases = nn.ModuleDict(), nn.ParameterDict()
        for name, p in shell.named_parameters():
            if name.startswith("weight"):
                self.matrices[name] = _Matrix(p.shape[0], p.shape[1], ranks.get(name))
            else:
                self.biases[name] = nn.Parameter(torch.zeros(p.shape))

    @property
    def original(self):
        """The class it stands in for, e.g. nn.GRU."""
        return type(self.shell)

    def __getattr__(self, name):  # hidden_size, num_layers, bidirectional, batch_first, proj_size ...
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("shell", "matrices", "biases"):
                raise
            return getattr(self.__dict__["shell"], name)

    def weights(self):
        """{PyTorch parameter name: dense tensor}, inside the autograd graph."""
        return {**{n: m.dense() for n, m in self.matrices.items()}, **dict(self.biases.items())}

    def forward(self, *args, **kwargs):
        self.shell.train(self.training)
        return functional_call(self.shell, self.weights(), args, kwargs)

    @classmethod
    def from_module(cls, mod, ranks, init=True, covs=None):
        """From an original module or a LowRankRecurrent, each matrix at its rank in `ranks`
        (`covs[weight name]`: its inputs' second moment, for the whitened factorisation)."""
        shell = mod.shell if isinstance(mod, LowRankRecurrent) else mod
        new = cls(copy_shell(shell), ranks)
        if init:
            src = mod.weights() if isinstance(mod, LowRankRecurrent) else dict(mod.named_parameters())
            for name, m in new.matrices.items():
                m.set_from(src[name].detach(), (covs or {}).get(name))
            with torch.no_grad():
                for name, b in new.biases.items():
                    b.copy_(src[name])
        return new

    def extra_repr(self):
        ranks = {n: m.rank for n, m in self.matrices.items() if m.rank is not None}
        return f"{self.shell!r}, ranks={ranks}"


def copy_shell(mod):
    """An empty module of the same class and arguments as `mod`, on the meta device."""
    if isinstance(mod, (nn.LSTMCell, nn.GRUCell)):
        kw = {"bias": mod.bias}
    else:
        kw = {k: getattr(mod, k) for k in ("num_layers", "bias", "batch_first", "dropout", "bidirectional")}
        if isinstance(mod, nn.LSTM):
            kw["proj_size"] = mod.proj_size
    with torch.device("meta"):
        return type(mod)(mod.input_size, mod.hidden_size, **kw)


def dense_module(mod):
    """The plain PyTorch module that computes what a factored one does (weights U V), or None for a
    module that is not factored."""
    with torch.no_grad():
        if isinstance(mod, LowRankLinear):
            out = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            out.weight.copy_(mod.dense_weight())
            if mod.bias is not None:
                out.bias.copy_(mod.bias)
            return out
        if isinstance(mod, LowRankLSTM):
            out = nn.LSTM(mod.input_size, mod.hidden_size, mod.num_layers, batch_first=mod.batch_first,
                          bidirectional=mod.bidirectional)
            for layer in range(mod.num_layers):
                for d in range(2 if mod.bidirectional else 1):
                    cell, sfx = mod.cells[cell_name(layer, d)], f"_l{layer}" + ("_reverse" if d else "")
                    getattr(out, "weight_ih" + sfx).copy_(cell.ih.dense())
                    getattr(out, "weight_hh" + sfx).copy_(cell.hh.dense())
                    getattr(out, "bias_ih" + sfx).copy_(cell.bias)
                    getattr(out, "bias_hh" + sfx).zero_()
            return out
        if isinstance(mod, LowRankRecurrent):
            out = copy_shell(mod.shell).to_empty(device="cpu")
            for name, w in mod.weights().items():
                getattr(out, name).copy_(w)
            return out
    return None
