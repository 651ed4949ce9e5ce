"""The latency of any model's layers in onnxruntime, for a latency budget where the native kernels do
not run the model (Linears, GRUs, cells, LSTMs with projections): each selected matrix's product timed
alone, 1 thread, at the shape the task's example inputs give it (forward hooks count its rows and
calls), dense and at a grid of ranks; a policy's cost is the sum over the layers, linear between grid
ranks. The ONNX lowering recomposes a GRU's or a cell's factors (export/generic.py), so their cost
does not fall with the rank. `validate` checks the table against the whole exported model.
"""
import copy
import random

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.nn.utils.rnn import PackedSequence

from export.generic import export_onnx, onnx_ms, session, time_ms
from pipeline.errors import PipelineError
from pipeline.lowrank.factorize import SNAP, factorize, max_rank

RECOMPOSED = ("GRU", "LSTMCell", "GRUCell")  # lowered on U V: a rank gains no latency there
COPIES, WORK = 8, 8_000_000  # up to COPIES products per timed graph, while under WORK multiply-adds:
                              # a small product's run overhead is shared, a large one runs alone


def call_shapes(model, example_inputs, layer_list):
    """{layer name: (rows, calls)}: the rows of each product of the layer's matrix and how many such
    products one forward pass on the example inputs makes."""
    seen, hooks = {}, []
    for path in {l.module for l in layer_list}:
        def record(mod, args, path=path):
            seen.setdefault(path, []).append(args[0])
        hooks.append(model.get_submodule(path).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for l in layer_list:
        xs = seen.get(l.module)
        if not xs:
            raise PipelineError(f"latency: layer {l.name} does not run on the task's example_inputs")
        x = xs[0]
        if l.kind == "linear" or l.type in ("LSTMCell", "GRUCell"):
            out[l.name] = (x.numel() // x.shape[-1] if x.dim() > 1 else 1, len(xs))
            continue
        if isinstance(x, PackedSequence):
            steps, batch = len(x.batch_sizes), int(x.batch_sizes[0])
        elif x.dim() == 2:
            steps, batch = x.shape[0], 1
        else:
            first = model.get_submodule(l.module).batch_first
            steps, batch = (x.shape[1], x.shape[0]) if first else (x.shape[0], x.shape[1])
        out[l.name] = (steps * batch, len(xs)) if l.kind.endswith("_ih") else (batch, steps * len(xs))
    return out


def product_us(rows, m, n, rank, reps=20):
    """us of one product (rows x n) . W^T (W: m x n) in onnxruntime, 1 thread: one MatMul dense, two
    through `rank` factored; the median over `reps` runs of a graph of up to COPIES such products."""
    rng = np.random.default_rng(0)
    nodes, inits, outs = [], [], []
    copies = max(1, min(COPIES, WORK // (rows * m * n)))
    for k in range(copies):
        src = "x"
        for j, shape in enumerate([(n, m)] if rank is None else [(n, rank), (rank, m)]):
            inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), f"w{k}_{j}"))
            nodes.append(helper.make_node("MatMul", [src, f"w{k}_{j}"], [f"y{k}_{j}"]))
            src = f"y{k}_{j}"
        outs.append(helper.make_tensor_value_info(src, TensorProto.FLOAT, [rows, m]))
    graph = helper.make_graph(nodes, "products", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, n])],
                              outs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    sess, feed = session(proto.SerializeToString()), {"x": rng.standard_normal((rows, n)).astype(np.float32)}
    return 1e3 * time_ms(lambda: sess.run(None, feed), reps, warmup=1)[0] / copies


def grid(limit):
    """Ranks timed for a matrix of rank limit `limit`: powers of two from SNAP, and the limit."""
    ranks, r = [], SNAP
    while r < limit:
        ranks.append(r)
        r *= 2
    return ranks + [limit]


class OnnxLayerCost:
    """A latency cost (us per forward pass on the example inputs) of the selected layers, for RankSpace."""

    kind = "latency"

    def __init__(self, model, example_inputs, layer_list, reps=20):
        if not example_inputs:
            raise PipelineError("--cost latency: the task needs example_inputs to time its layers in onnxruntime")
        self.layers, self.shapes = layer_list, call_shapes(model, example_inputs, layer_list)
        self.points = {}
        for l in layer_list:
            rows, _ = self.shapes[l.name]
            dense = product_us(rows, *l.shape, None, reps)
            ranks = [] if l.type in RECOMPOSED else grid(max_rank(l))
            self.points[l.name] = {None: dense, **{r: product_us(rows, *l.shape, r, reps) for r in ranks}}
        self.fixed = {l.name: l.rank for l in layer_list}
        self.reference = self.total({l.name: None for l in layer_list})

    def layer_us(self, layer, rank):
        pts = self.points[layer.name]
        if rank is None or layer.type in RECOMPOSED:
            us = pts[None]
        else:
            ranks = sorted(r for r in pts if r is not None)
            lo = max([r for r in ranks if r <= rank], default=ranks[0])
            hi = min([r for r in ranks if r >= rank], default=ranks[-1])
            w = 0.0 if hi == lo else (rank - lo) / (hi - lo)
            us = (1 - w) * pts[lo] + w * pts[hi]
        return us * self.shapes[layer.name][1]

    def total(self, policy):
        return float(sum(self.layer_us(l, policy.get(l.name, self.fixed[l.name])) for l in self.layers))


def validate(task, cost, out, n_policies=5, seed=0, reps=20, log=print):
    """Predicted against measured onnxruntime latency of the whole model (exported from the example
    inputs) at random rank policies of the cost's layers: predicted = measured dense - the table's
    dense layers + the table's layers at the policy. Returns the pairs."""
    rng = random.Random(seed)
    export_onnx(task.model, task.example_inputs, out / "dense", int8=False, ort_format=False)
    dense_ms = onnx_ms(out / "dense" / "model.onnx", task.example_inputs, reps)[0]
    pairs = []
    for k in range(n_policies):
        policy = {l.name: rng.randrange(SNAP, max_rank(l) + 1, SNAP) for l in cost.layers if rng.random() < 0.85}
        model = factorize(copy.deepcopy(task.model), policy)
        export_onnx(model, task.example_inputs, out / f"p{k}", int8=False, ort_format=False)
        meas = onnx_ms(out / f"p{k}" / "model.onnx", task.example_inputs, reps)[0]
        pred = dense_ms + (cost.total(policy) - cost.reference) / 1000
        pairs.append({"policy": k, "ranks": policy, "predicted_ms": pred, "measured_ms": meas, "error": pred / meas - 1})
        log(f"policy {k}: predicted {pred:8.2f} ms, measured {meas:8.2f}, error {100 * (pred / meas - 1):+5.1f}%")
    return pairs
