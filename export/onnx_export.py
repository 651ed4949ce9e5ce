"""Lowering a dense or factored checkpoint to ONNX: `encoder.onnx`, `decoder_step.onnx` and
`model.json`, optionally int8 (dynamic quantisation) and ORT-format copies for mobile.

A low-rank encoder LSTM is lowered one of two ways, chosen per layer by measured onnxruntime latency:
- "lstm_op": the input projection as a MatMul by V_i, then the standard ONNX LSTM operator with
  W = U_i (input size r) and R = U_h V_h recomposed;
- "scan": the input projection as two MatMuls over all frames, then a Scan whose body does the two
  low-rank MatMuls of the recurrence and the gates.
Dense LSTMs use the standard LSTM operator. The decoder runs one step per call; its LSTM (dense or
factored) and Linears are traced for that single step as plain MatMuls.
"""
import copy
import io
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from export.native import cells_of
from export.runner import FORMAT_VERSION, OnnxAsr
from pipeline.atomic import atomic_path, write_json
from pipeline.data.features import Cmvn
from pipeline.errors import PipelineError
from pipeline.lowrank.checkpoint import load_checkpoint, sha256
from pipeline.lowrank.modules import LowRankLSTM, cell_name

OPSET = 17


def _dense(m):
    return m.weight if m.rank is None else m.U @ m.V


class LstmOpLowering(nn.Module):
    """A single-layer, one-direction LowRankLSTM as MatMul (V_i) + a standard LSTM (W = U_i, R = U_h V_h)."""

    def __init__(self, lr, cell=None):
        super().__init__()
        cell = lr.cells[cell or cell_name(0, 0)]
        self.v = None if cell.ih.rank is None else nn.Parameter(cell.ih.V.detach().clone())
        w_ih = cell.ih.weight if cell.ih.rank is None else cell.ih.U
        self.lstm = nn.LSTM(w_ih.shape[1], lr.hidden_size, batch_first=True)
        with torch.no_grad():
            self.lstm.weight_ih_l0.copy_(w_ih)
            self.lstm.weight_hh_l0.copy_(_dense(cell.hh))
            self.lstm.bias_ih_l0.copy_(cell.bias)
            self.lstm.bias_hh_l0.zero_()

    def forward(self, x):
        if self.v is not None:
            x = x @ self.v.t()
        return self.lstm(x)[0]


class ExportEncoder(nn.Module):
    """Raw log-mel features (1, T, n_mels) -> encoder states, attention keys and CTC log-probs.
    CMVN is inside the graph; batch 1 (one utterance), any number of frames."""

    def __init__(self, model, cmvn, lowering):
        super().__init__()
        self.register_buffer("mean", cmvn.mean.clone())
        self.register_buffer("std", cmvn.std.clone())
        self.subsample = model.encoder.subsample
        self.layers = nn.ModuleList()
        for i, layer in enumerate(model.encoder.lstms):
            self.layers.append(nn.ModuleDict({d: self._lstm(mod, lowering.get(f"encoder.lstms.{i}.{d}", "lstm_op"))
                                              for d, mod in layer.items()}))
        self.key, self.ctc = model.decoder.attention.key, model.ctc

    @staticmethod
    def _lstm(mod, how):
        # "scan" layers are traced as lstm_op too; scan_lowering() then swaps their LSTM node for a Scan.
        return LstmOpLowering(mod) if isinstance(mod, LowRankLSTM) else LstmOutput(mod)

    def forward(self, feats):
        x = (feats - self.mean) / self.std
        lengths = torch.full((1,), x.shape[1], dtype=torch.long)
        x, _ = self.subsample(x, lengths)
        x = self.lstm_stack(x)
        return x, self.key(x), torch.log_softmax(self.ctc(x), dim=-1)

    def lstm_stack(self, x):
        for layer in self.layers:
            outs = [layer["fwd"](x)]
            if "bwd" in layer:
                outs.append(torch.flip(layer["bwd"](torch.flip(x, [1])), [1]))
            x = torch.cat(outs, dim=2)
        return x


class _StackOnly(nn.Module):
    """The encoder's LSTM stack alone (subsampled features in), for measuring it."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        return self.encoder.lstm_stack(x)


class LstmOutput(nn.Module):
    """An LSTM's output sequence alone (what an export traces)."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x):
        return self.lstm(x)[0]


class _Single(nn.Module):
    """One encoder LSTM alone, for measuring its lowerings."""

    def __init__(self, mod):
        super().__init__()
        self.lstm = LstmOpLowering(mod)

    def forward(self, x):
        return self.lstm(x)


# ---- the Scan lowering -------------------------------------------------------------------------

def lstm_nodes(graph, names):
    """{name: LSTM node}: the exporter emits nodes in execution order, so the k-th LSTM node is the k-th
    LSTM that ran (its node names do not say which module it came from)."""
    nodes = [n for n in graph.node if n.op_type == "LSTM"]
    if len(nodes) != len(names):
        raise PipelineError(f"export: {len(nodes)} LSTM nodes in the graph for {len(names)} LSTM modules")
    return dict(zip(names, nodes))


def scan_lowering(model_proto, node, lr, tag):
    """Replace the LSTM `node` (traced from LstmOpLowering of the LowRankLSTM `lr`) by an input
    projection over all frames and a Scan whose body does the low-rank recurrence and the gates."""
    g = model_proto.graph
    cell = lr.cells[cell_name(0, 0)]
    h = lr.hidden_size
    w_in = (cell.ih.weight if cell.ih.rank is None else cell.ih.U).detach().numpy()  # 4H x (in or r), ifgo
    hh = cell.hh
    rec = [hh.weight.detach().numpy().T] if hh.rank is None else [hh.V.detach().numpy().T, hh.U.detach().numpy().T]
    names = {k: f"{tag}_{k}" for k in ("w_in", "b", "h0", "c0", "xw", "hs", "y")}
    consts = [numpy_helper.from_array(w_in.T.copy(), names["w_in"]),
              numpy_helper.from_array(cell.bias.detach().numpy().copy(), names["b"]),
              numpy_helper.from_array(np.zeros((1, h), np.float32), names["h0"]),
              numpy_helper.from_array(np.zeros((1, h), np.float32), names["c0"])]
    consts += [numpy_helper.from_array(m.astype(np.float32).copy(), f"{tag}_r{i}") for i, m in enumerate(rec)]
    x = node.input[0]  # (T, 1, in): the LSTM op's layout
    pre = [helper.make_node("MatMul", [x, names["w_in"]], [names["xw"] + "_mm"], name=f"{tag}/in_proj"),
           helper.make_node("Add", [names["xw"] + "_mm", names["b"]], [names["xw"]], name=f"{tag}/in_bias")]
    body = _scan_body(h, [f"{tag}_r{i}" for i in range(len(rec))])
    scan = helper.make_node("Scan", [names["h0"], names["c0"], names["xw"]], [names["h0"] + "_T", names["c0"] + "_T",
                            names["hs"]], name=f"{tag}/scan", num_scan_inputs=1, body=body)
    post = [helper.make_node("Unsqueeze", [names["hs"], f"{tag}_axis1"], [node.output[0]], name=f"{tag}/y")]
    consts.append(numpy_helper.from_array(np.array([1], np.int64), f"{tag}_axis1"))
    idx = list(g.node).index(node)
    g.node.remove(node)
    for i, n in enumerate(pre + [scan] + post):
        g.node.insert(idx + i, n)
    g.initializer.extend(consts)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used or t.name in _body_inputs(g)]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model_proto


def _body_inputs(graph):
    """Names that Scan bodies read from the outer graph."""
    names = set()
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= {i for m in a.g.node for i in m.input}
    return names


def _scan_body(h, rec_names):
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, [1, h]) for n in ("h", "c")]
    inputs.append(helper.make_tensor_value_info("xw", f, [1, 4 * h]))
    nodes, cur = [], "h"
    for i, r in enumerate(rec_names):  # h V_h^T then (.) U_h^T, or h W_hh^T when dense
        nodes.append(helper.make_node("MatMul", [cur, r], [f"rec{i}"]))
        cur = f"rec{i}"
    nodes += [helper.make_node("Add", ["xw", cur], ["gates"]),
              helper.make_node("Split", ["gates", "split4"], ["gi", "gf", "gg", "go"], axis=1),
              helper.make_node("Sigmoid", ["gi"], ["i"]), helper.make_node("Sigmoid", ["gf"], ["fg"]),
              helper.make_node("Tanh", ["gg"], ["g"]), helper.make_node("Sigmoid", ["go"], ["o"]),
              helper.make_node("Mul", ["fg", "c"], ["fc"]), helper.make_node("Mul", ["i", "g"], ["ig"]),
              helper.make_node("Add", ["fc", "ig"], ["c_out"]), helper.make_node("Tanh", ["c_out"], ["tc"]),
              helper.make_node("Mul", ["o", "tc"], ["h_out"]), helper.make_node("Identity", ["h_out"], ["y"])]
    split = numpy_helper.from_array(np.array([h] * 4, np.int64), "split4")
    outputs = [helper.make_tensor_value_info(n, f, [1, h]) for n in ("h_out", "c_out", "y")]
    return helper.make_graph(nodes, "lowrank_lstm_step", inputs, outputs, [split])


# ---- export ------------------------------------------------------------------------------------

class ExportDecoderStep(nn.Module):
    """One decoder step for one hypothesis: (token, h, c, context, attention weights, enc, keys) ->
    (log-probs, h, c, context, attention weights)."""

    def __init__(self, model):
        super().__init__()
        self.dec = model.decoder

    def forward(self, token, h, c, context, weights, enc, keys):
        mask = torch.ones_like(weights, dtype=torch.bool)
        logp, ((h, c), context, weights) = self.dec.step(token, ((h, c), context, weights), keys, enc, mask)
        return logp, h, c, context, weights


class ExportLmStep(nn.Module):
    """One step of a character LM (pipeline/model/lm.py, dense or factored) for every live hypothesis:
    (token (k,), h, c (layers, k, hidden)) -> (log-probs (k, vocab), h, c); each matrix one MatMul,
    or two through its rank."""

    def __init__(self, lm):
        super().__init__()
        self.lm = copy.deepcopy(lm).eval()
        self.cells = cells_of(self.lm.lstm)[0]
        for k, (_, _, bias, _) in enumerate(self.cells):  # an nn.LSTM's b_ih + b_hh: a constant of the graph
            self.register_buffer(f"bias{k}", bias.detach().clone())

    @staticmethod
    def _mul(x, m):
        return x @ m.t() if isinstance(m, torch.Tensor) else m.apply(x)

    def forward(self, token, h, c):
        x, hs, cs = self.lm.embed(token), [], []
        for k, (ih, hh, _, _) in enumerate(self.cells):
            i, f, g, o = (self._mul(x, ih) + self._mul(h[k], hh) + getattr(self, f"bias{k}")).chunk(4, dim=1)
            ck = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(ck)
            hs.append(x)
            cs.append(ck)
        return torch.log_softmax(self.lm.out(x), dim=-1), torch.stack(hs), torch.stack(cs)


def export_lm(lm, out_dir, model_id, int8=False):
    """OUT/lm_step.onnx (+ lm_step.int8.onnx) of a character LM; returns {key: file name}."""
    out = Path(out_dir)
    layers, hidden = len(ExportLmStep(lm).cells), lm.cfg.hidden
    h = torch.zeros(layers, 2, hidden)
    proto = to_onnx(ExportLmStep(lm), (torch.tensor([1, 1]), h, h.clone()), ["token", "h", "c"],
                    ["logp", "h_out", "c_out"],
                    {"token": {0: "k"}, "h": {1: "k"}, "c": {1: "k"}, "logp": {0: "k"}, "h_out": {1: "k"}, "c_out": {1: "k"}})
    save_proto(proto, out / "lm_step.onnx", model_id)
    files = {"lm_step": "lm_step.onnx"}
    if int8:
        files.update(quantize(out, model_id, keys=("lm_step",)))
    return files


def to_onnx(module, args, input_names, output_names, dynamic_axes):
    """torch.onnx.export (TorchScript exporter: dynamo=False keeps an LSTM one ONNX LSTM op) to a proto."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on batch_first LSTMs and constant folding
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def save_proto(proto, path, model_id):
    proto.ir_version = min(proto.ir_version, 8)  # what onnxruntime 1.23 and its mobile builds read
    del proto.metadata_props[:]
    proto.metadata_props.add(key="model_id", value=model_id)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def _lowrank_lstms(model):
    return {f"encoder.lstms.{i}.{d}": mod for i, layer in enumerate(model.encoder.lstms)
            for d, mod in layer.items() if isinstance(mod, LowRankLSTM)}


def _time_session(proto, feed, reps=20):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def lowering_seconds(mod, frames=200):
    """{lowering: seconds} of one encoder LSTM over `frames` frames in onnxruntime (1 thread): both
    lowerings of a LowRankLSTM, the LSTM operator of a dense one."""
    x = torch.randn(1, frames, mod.input_size)
    feed, axes = {"x": x.numpy()}, {"x": {1: "T"}, "y": {1: "T"}}
    if not isinstance(mod, LowRankLSTM):
        return {"lstm_op": _time_session(to_onnx(LstmOutput(mod).eval(), (x,), ["x"], ["y"], axes), feed)}
    proto = to_onnx(_Single(mod).eval(), (x,), ["x"], ["y"], axes)
    t_op = _time_session(proto, feed)
    node = lstm_nodes(proto.graph, ["lstm"])["lstm"]
    return {"lstm_op": t_op, "scan": _time_session(scan_lowering(proto, node, mod, "s"), feed)}


def choose_lowering(model, frames=200):
    """{layer: "lstm_op" | "scan"} for each low-rank encoder LSTM: the faster in onnxruntime (1 thread)
    on `frames` frames, with the measured seconds of each."""
    out = {}
    for name, mod in _lowrank_lstms(model).items():
        t = lowering_seconds(mod, frames)
        out[name] = {"lowering": min(t, key=t.get), "lstm_op_s": t["lstm_op"], "scan_s": t["scan"]}
    return out


def _apply_scan(proto, model, choice):
    """Swap the LSTM node of every encoder layer whose lowering is "scan" for its Scan."""
    order = [f"encoder.lstms.{i}.{d}" for i, layer in enumerate(model.encoder.lstms) for d in layer]
    nodes, lowrank = lstm_nodes(proto.graph, order), _lowrank_lstms(model)
    for name, how in choice.items():
        if how == "scan":
            proto = scan_lowering(proto, nodes[name], lowrank[name], name.replace(".", "_"))
    return proto


def stack_seconds(model, frames=200):
    """Seconds of the encoder's LSTM stack over `frames` frames in onnxruntime (1 thread), each low-rank
    layer in its faster lowering."""
    choice = {name: m["lowering"] for name, m in choose_lowering(model, frames).items()}
    enc = ExportEncoder(model, Cmvn(torch.zeros(model.cfg.n_mels), torch.ones(model.cfg.n_mels)), choice).eval()
    x = torch.randn(1, frames, model.encoder.subsample.out_dim)
    proto = to_onnx(_StackOnly(enc), (x,), ["x"], ["y"], {"x": {1: "T"}, "y": {1: "T"}})
    return _time_session(_apply_scan(proto, model, choice), {"x": x.numpy()})


def export(checkpoint, out_dir, int8=False, ort_format=False, lowering="auto", log=print, lm=None, lm_info=None):
    """Writes DIR/encoder.onnx, DIR/decoder_step.onnx (+ int8, + .ort), with `lm` (a CharLM)
    DIR/lm_step.onnx (model.json's "lm" also holds `lm_info`), and DIR/model.json (last)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # model.json names the graphs and is written last: without it no runner trusts a half-written export
    (out / "model.json").unlink(missing_ok=True)
    model, cmvn, header = load_checkpoint(checkpoint)
    model_id = sha256(checkpoint)
    layers = _lowrank_lstms(model)
    if lowering == "auto":
        measured = choose_lowering(model)
    elif lowering in ("lstm_op", "scan"):
        measured = {name: {"lowering": lowering} for name in layers}
    else:
        raise PipelineError(f"--lowering: {lowering!r} is not auto, lstm_op or scan")
    choice = {name: m["lowering"] for name, m in measured.items()}
    for name, how in choice.items():
        log(f"{name}: {how}" + (f" (lstm_op {measured[name]['lstm_op_s'] * 1e3:.2f} ms, scan "
                                f"{measured[name]['scan_s'] * 1e3:.2f} ms for 200 frames)" if "scan_s" in measured[name] else ""))
    cfg = model.cfg
    enc = ExportEncoder(model, cmvn, choice).eval()
    feats = torch.randn(1, 120, cfg.n_mels)
    proto = to_onnx(enc, (feats,), ["feats"], ["enc", "keys", "ctc_logp"],
                     {"feats": {1: "frames"}, "enc": {1: "enc_frames"}, "keys": {1: "enc_frames"},
                      "ctc_logp": {1: "enc_frames"}})
    save_proto(_apply_scan(proto, model, choice), out / "encoder.onnx", model_id)
    with torch.no_grad():
        e, k, _ = enc(feats)
    h = torch.zeros(cfg.dec_layers, 1, cfg.dec_hidden)
    args = (torch.tensor([1]), h, h.clone(), torch.zeros(1, e.shape[2]), torch.full((1, e.shape[1]), 1.0 / e.shape[1]),
            e, k)
    step = to_onnx(ExportDecoderStep(model).eval(), args, ["token", "h", "c", "context", "weights", "enc", "keys"],
                    ["logp", "h_out", "c_out", "context_out", "weights_out"],
                    {"weights": {1: "enc_frames"}, "enc": {1: "enc_frames"}, "keys": {1: "enc_frames"},
                     "weights_out": {1: "enc_frames"}})
    save_proto(step, out / "decoder_step.onnx", model_id)
    files = {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}
    if int8:
        files.update(quantize(out, model_id))
    if lm is not None:
        files.update(export_lm(lm, out, model_id, int8))
    if ort_format:
        files.update(to_ort(out, [f for f in files.values()]))
    meta = {"format_version": FORMAT_VERSION, "model_id": model_id, "checkpoint": str(checkpoint),
            "model_config": cfg.to_dict(), "vocab": header["vocab"], "cmvn": cmvn.to_json(),
            "ranks": header.get("ranks", {}), "lowering": measured, "files": files, "opset": OPSET,
            "features": {"sample_rate": 16000, "num_mel_bins": cfg.n_mels, "frame_length_ms": 25.0,
                         "frame_shift_ms": 10.0}}
    if lm is not None:
        meta["lm"] = {"layers": lm.cfg.layers, "hidden": lm.cfg.hidden, **(lm_info or {})}
    write_json(out / "model.json", meta)
    return meta


def quantize(out, model_id, keys=("encoder", "decoder_step")):
    """OUT/<key>.int8.onnx from OUT/<key>.onnx for each key (onnxruntime's dynamic quantisation)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is for static quantisation
    files = {}
    for key in keys:
        dst = out / f"{key}.int8.onnx"
        with atomic_path(dst) as tmp:
            # Conv would become ConvInteger, which onnxruntime's CPU provider lacks: weights of the
            # matrix products only (they are nearly all of the model).
            quantize_dynamic(str(out / f"{key}.onnx"), str(tmp), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm", "LSTM"])
        proto = onnx.load(str(dst))
        save_proto(proto, dst, model_id)
        files[f"{key}_int8"] = dst.name
    return files


def to_ort(out, names):
    """onnxruntime's own converter to the ORT format for mobile (`onnxruntime.tools.convert_onnx_models_to_ort`)."""
    files = {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for n in names:
            shutil.copy(out / n, Path(tmp) / n)
        res = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", tmp,
                              "--output_dir", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise PipelineError(f"ORT conversion failed: {res.stderr.strip().splitlines()[-1:]}")
        for n in names:
            ort_name = n[: -len(".onnx")] + ".ort"
            if not (Path(tmp) / ort_name).exists():
                raise PipelineError(f"ORT conversion wrote no {ort_name}")
            shutil.move(str(Path(tmp) / ort_name), out / ort_name)
            files[n.replace(".onnx", "").replace(".", "_") + "_ort"] = ort_name
    return files


def parity(checkpoint, out_dir, feats=None):
    """Max abs difference between the exported encoder's states and PyTorch's on `feats` (T, n_mels)
    (a fixed pseudo-random input when None)."""
    model, cmvn, _ = load_checkpoint(checkpoint)
    if feats is None:
        feats = torch.from_numpy(np.random.default_rng(0).standard_normal((300, model.cfg.n_mels)).astype(np.float32))
    with torch.no_grad():
        want = model.encode(cmvn(feats)[None], torch.tensor([feats.shape[0]]))[0][0].numpy()
    got = OnnxAsr(out_dir).encode(feats.numpy())[0][0]
    return float(np.abs(got - want).max())
