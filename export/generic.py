"""Export of any model from its example inputs: ONNX (fp32, int8, .ort) checked against PyTorch on
those inputs, and the native model file holding every LSTM stack the C++ runtime runs.

The ONNX graph is traced at the example inputs' shapes (axes the tracer can tell are free stay
free: torch.onnx marks none by itself, so a model meant for other lengths should be given inputs
of the length it is benchmarked at). A factored Linear lowers to two MatMuls, a factored LSTM or
GRU to its operator on the recomposed weights, or, for a LowRankLSTM in inference, to the unrolled
two-MatMul recurrence at the example length.
"""
import copy
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.native import FP32, encode, stack_entries, write
from export.onnx_export import LstmOpLowering, LstmOutput, quantize, save_proto, to_onnx, to_ort
from pipeline import _native
from pipeline.errors import PipelineError
from pipeline.lowrank.factorize import put_module
from pipeline.lowrank.modules import LowRankLSTM, LowRankRecurrent, cell_name, dense_module


def _names(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def _flat(outputs):
    """The tensors of a model's output (a tensor, or nested tuples and lists of them), in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [t for o in outputs for t in _flat(o)]
    return []


class OnnxLowRankLstm(nn.Module):
    """A LowRankLSTM as one ONNX LSTM operator per layer and direction after a MatMul by V_i (the
    recogniser encoder's "lstm_op" lowering, for any stack); from a zero state, as export traces it."""

    def __init__(self, lr):
        super().__init__()
        self.batch_first, self.dirs = lr.batch_first, 2 if lr.bidirectional else 1
        self.cells = nn.ModuleList(LstmOpLowering(lr, cell_name(layer, d))
                                   for layer in range(lr.num_layers) for d in range(self.dirs))

    def forward(self, x, hx=None):
        if hx is not None:
            raise PipelineError("ONNX export: a factored LSTM called with an initial state; export traces it "
                                "from a zero state")
        return run_stack(x, self.batch_first, len(self.cells) // self.dirs, self.dirs, self._cell)

    def _cell(self, layer, d, x):
        cell = self.cells[layer * self.dirs + d]
        y, (h, c) = cell.lstm(x if cell.v is None else x @ cell.v.t())
        return y, h[0], c[0]


class OnnxProjectedLstm(nn.Module):
    """An LSTM with projections (nn.LSTM(proj_size=P) or its factored form), which torch.onnx does not
    export, as explicit steps unrolled over the traced length: each matrix one MatMul, or two through
    its rank. From a zero state over whole (unpadded) sequences."""

    def __init__(self, mod):
        super().__init__()
        self.batch_first, self.layers, self.hidden = mod.batch_first, mod.num_layers, mod.hidden_size
        self.proj, self.dirs = mod.proj_size, 2 if mod.bidirectional else 1
        weights = mod.weights() if isinstance(mod, LowRankRecurrent) else dict(mod.named_parameters())
        self.factors = nn.ParameterDict()
        for name, w in weights.items():
            m = mod.matrices[name] if isinstance(mod, LowRankRecurrent) and name in mod.matrices else None
            if m is not None and m.rank is not None:
                self.factors[name + "_U"], self.factors[name + "_V"] = (nn.Parameter(t.detach().clone())
                                                                        for t in (m.U, m.V))
            else:
                self.factors[name] = nn.Parameter(w.detach().clone())

    def _mul(self, x, name):
        if name in self.factors:
            return x @ self.factors[name].t()
        return (x @ self.factors[name + "_V"].t()) @ self.factors[name + "_U"].t()

    def _bias(self, name):
        return self.factors[name] if name in self.factors else 0.0

    def forward(self, x, hx=None):
        if hx is not None:
            raise PipelineError("ONNX export: a projected LSTM called with an initial state; export traces it "
                                "from a zero state")
        return run_stack(x, self.batch_first, self.layers, self.dirs, self._cell)

    def _cell(self, layer, d, x):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        pre = self._mul(x, "weight_ih" + sfx) + self._bias("bias_ih" + sfx) + self._bias("bias_hh" + sfx)
        h, c = x.new_zeros(x.shape[0], self.proj), x.new_zeros(x.shape[0], self.hidden)
        ys = []
        for t in range(x.shape[1]):
            i, f, g, o = (pre[:, t] + self._mul(h, "weight_hh" + sfx)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = self._mul(torch.sigmoid(o) * torch.tanh(c), "weight_hr" + sfx)
            ys.append(h)
        return torch.stack(ys, dim=1), h, c


def run_stack(x, batch_first, layers, dirs, cell):
    """A stack as nn.LSTM runs it: layer by layer, each direction on the sequence (time-reversed for the
    second) through cell(layer, direction, x batch-first) -> (outputs, h, c); returns the outputs
    and the final states (layers x directions, batch, size)."""
    x = x if batch_first else x.transpose(0, 1)
    hs, cs = [], []
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            y, h, c = cell(layer, d, x if d == 0 else torch.flip(x, [1]))
            outs.append(y if d == 0 else torch.flip(y, [1]))
            hs.append(h)
            cs.append(c)
        x = torch.cat(outs, dim=2) if dirs == 2 else outs[0]
    return (x if batch_first else x.transpose(0, 1)), (torch.stack(hs), torch.stack(cs))


def _projected(mod):
    return getattr(mod, "proj_size", 0) and (isinstance(mod, nn.LSTM) or
                                            (isinstance(mod, LowRankRecurrent) and mod.original is nn.LSTM))


def onnx_view(model):
    """A copy of `model` that the tracer can lower: every LowRankLSTM as an OnnxLowRankLstm, every
    other factored recurrent module as its PyTorch module on U V (torch.func does not trace)."""
    view = copy.deepcopy(model).eval()
    for path, mod in list(view.named_modules()):
        new = OnnxLowRankLstm(mod) if isinstance(mod, LowRankLSTM) else OnnxProjectedLstm(mod) if _projected(mod) \
            else dense_module(mod) if isinstance(mod, LowRankRecurrent) else None
        if new is not None:
            view = put_module(view, path, new)
    return view


def export_onnx(model, example_inputs, out, int8=True, ort_format=True, model_id="model"):
    """OUT/model.onnx (+ model.int8.onnx, .ort copies); returns {files, parity: max abs difference
    between onnxruntime and PyTorch on the example inputs, per output}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        want = [t.numpy() for t in _flat(model(*example_inputs))]
    if not want:
        raise PipelineError("ONNX export: the model's output on example_inputs holds no tensor")
    proto = to_onnx(onnx_view(model), tuple(example_inputs), _names("input", len(example_inputs)), _names("output", len(want)), None)
    save_proto(proto, out / "model.onnx", model_id)
    files = {"fp32": "model.onnx"}
    if int8:
        files["int8"] = quantize(out, model_id, keys=("model",))["model_int8"]
    if ort_format:
        files.update(to_ort(out, list(files.values())))
    feed = feed_of(out / "model.onnx", example_inputs)
    got = session(out / "model.onnx").run(None, feed)
    diff = [float(np.abs(g - w).max()) if g.size else 0.0 for g, w in zip(got, want)]
    return {"files": files, "parity": diff}


def session(source, threads=1):
    """An onnxruntime session of a model file or a serialised model (bytes)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), so,
                                providers=["CPUExecutionProvider"])


def feed_of(path, example_inputs):
    names = [i.name for i in session(path).get_inputs()]
    return {n: t.numpy() for n, t in zip(names, example_inputs)}


def time_ms(fn, reps=20, warmup=2):
    """Median milliseconds of fn() over `reps` calls, and every call's time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), times


def onnx_ms(path, example_inputs, reps=20):
    sess, feed = session(path), feed_of(path, example_inputs)
    return time_ms(lambda: sess.run(None, feed), reps)


def native_stacks(model):
    """{module path: module} of the LSTM stacks the C++ runtime runs: every nn.LSTM (with or without
    projections and biases), dense or factored; GRUs and cells stay with PyTorch and onnxruntime."""
    return {path: m for path, m in model.named_modules()
            if isinstance(m, (nn.LSTM, LowRankLSTM)) or (isinstance(m, LowRankRecurrent) and m.original is nn.LSTM)}


def write_native(path, model, precision=FP32):
    """One model file with every native-runnable LSTM stack, each under its module path; returns
    the paths (what `lowrank_bench --weights FILE --prefix PATH` and `LstmStack(FILE, PATH)` take)."""
    stacks = native_stacks(model)
    if not stacks:
        return []
    entries = {}
    for name, m in stacks.items():
        entries.update(stack_entries(m, name or "root", precision))
    write(path, entries)
    return [name or "root" for name in stacks]


def native_parity(model, frames=50, seed=0):
    """{stack: max abs difference between the C++ stack and PyTorch's module} on random inputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, m in native_stacks(model).items():
        x = rng.standard_normal((frames, m.input_size)).astype(np.float32)
        native = _native.LstmStack(encode(stack_entries(m, "s")), "s", "auto")
        with torch.no_grad():
            want = m.eval()(torch.from_numpy(x)[:, None] if not m.batch_first else torch.from_numpy(x)[None])[0]
        out[name or "root"] = float(np.abs(native.forward(x) - want.reshape(frames, -1).numpy()).max())
    return out


def _stack_input(module, frames, seed=0):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((frames, module.input_size)).astype(np.float32))
    return x[None] if module.batch_first else x[:, None]


def stack_onnx_ms(module, out, frames=100, reps=20):
    """Median ms of an LSTM stack alone in onnxruntime on `frames` frames of one utterance (exported
    as export_onnx lowers it), to set beside native_ms."""
    x = _stack_input(module, frames)
    export_onnx(LstmOutput(module), (x,), out, int8=False, ort_format=False)
    return onnx_ms(Path(out) / "model.onnx", (x,), reps)


def native_ms(module, frames=100, reps=20, precision=FP32):
    """Median ms of the C++ stack of `module` over `frames` frames of one utterance."""
    native = _native.LstmStack(encode(stack_entries(module, "s", precision)), "s", "auto")
    x = np.random.default_rng(0).standard_normal((frames, module.input_size)).astype(np.float32)
    return time_ms(lambda: native.forward(x), reps)
