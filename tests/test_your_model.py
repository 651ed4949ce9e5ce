"""Compress your own model: factored drop-ins for every supported PyTorch layer, layer selection,
the task checkpoint with the user's class, ONNX export of any model, and a third-party-style task
through `compress --task` with each kind of bad input."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.errors import PipelineError
from pipeline.lowrank import LowRankRecurrent, densify, factorize, layers, select, uniform_ranks
from pipeline.task import load_factored, save_factored

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "tasks"), str(ROOT)]  # the toy tasks; examples/
from toy import Toy  # noqa: E402

MODULES = {
    "lstm-proj-bi": lambda: nn.LSTM(12, 32, num_layers=2, bidirectional=True, proj_size=8, batch_first=True),
    "lstm-nobias": lambda: nn.LSTM(12, 32, bias=False),
    "gru-bi": lambda: nn.GRU(12, 32, num_layers=2, bidirectional=True),
    "lstmcell": lambda: nn.LSTMCell(12, 32),
    "grucell": lambda: nn.GRUCell(12, 32),
}


def _flat(out):
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("name", MODULES)
def test_full_rank_factors_are_a_drop_in_for_each_layer_type(name):
    torch.manual_seed(0)
    mod = MODULES[name]().eval()
    full = factorize(copy.deepcopy(mod), {l.name: min(l.shape) for l in layers(mod)})
    assert isinstance(full, LowRankRecurrent) and full.original is type(mod)
    cell = name.endswith("cell")
    x = torch.randn(3, 12) if cell else torch.randn(3, 7, 12) if mod.batch_first else torch.randn(7, 3, 12)
    for args in ((x,), (x[0],)):  # batched and unbatched
        for a, b in zip(_flat(mod(*args)), _flat(full(*args))):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    if not cell:
        packed = pack_padded_sequence(x if mod.batch_first else x.transpose(0, 1), torch.tensor([7, 4, 2]),
                                      batch_first=True, enforce_sorted=False)
        for a, b in zip(_flat(mod(packed)[1]), _flat(full(packed)[1])):
            assert torch.allclose(a, b, atol=1e-5)
    half = factorize(copy.deepcopy(mod), uniform_ranks(mod, 0.5, snap=False))
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in mod.parameters())
    half.train()
    h = torch.randn(3, 32)  # a cell from a zero state gives its recurrent matrix no gradient
    state = ((h, h) if name == "lstmcell" else h,) if cell else ()
    sum(t.sum() for t in _flat(half(x, *state))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in half.parameters())
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(_flat(half.eval()(x)), _flat(densify(half)(x))))


def test_select_by_globs_and_types_and_its_errors():
    model = Toy()
    names = [l.name for l in select(model, include=["lstm*"], types=["LSTM"])]
    assert names and all(n.startswith("lstm.") for n in names) and "lstm.l1_reverse.hr" in names
    assert {l.type for l in select(model, exclude=["lstm", "gru"])} == {"Linear", "LSTMCell", "GRUCell"}
    assert [l.name for l in select(model, types=["GRUCell"])] == ["gcell.ih", "gcell.hh"]
    with pytest.raises(PipelineError, match="include glob 'encoder.\\*' matches no layer"):
        select(model, include=["encoder.*"])
    with pytest.raises(PipelineError, match="type 'Conv1d' is not one of"):
        select(model, types=["Conv1d"])
    with pytest.raises(PipelineError, match="no compressible layer"):
        select(nn.Sequential(nn.ReLU()))


def test_task_checkpoint_round_trips_with_the_users_class(tmp_path):
    torch.manual_seed(0)
    model = Toy().eval()
    factored = factorize(copy.deepcopy(model), uniform_ranks(model, 0.5))
    save_factored(tmp_path / "m.safetensors", factored, {"provenance": {"by": "test"}})
    back = load_factored(tmp_path / "m.safetensors", model)
    x = torch.randn(2, 9, 12)
    assert torch.equal(back(x), factored(x)) and type(back) is Toy
    assert {l.name: l.rank for l in layers(back)} == {l.name: l.rank for l in layers(factored)}


def test_any_model_exports_to_onnx_with_parity(tmp_path):
    from export.generic import export_onnx

    torch.manual_seed(0)
    model = Toy().eval()
    factored = factorize(copy.deepcopy(model), uniform_ranks(model, 0.5))
    x = torch.randn(1, 15, 12)
    for m, out in ((model, tmp_path / "dense"), (factored, tmp_path / "factored")):
        r = export_onnx(m, (x,), out, ort_format=False)
        assert max(r["parity"]) < 1e-4, r
        assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_projected_lstm_runs_natively_dense_and_factored_on_every_path(bidirectional):
    from export.native import encode, stack_entries
    from pipeline import _native

    torch.manual_seed(0)
    lstm = nn.LSTM(20, 48, num_layers=2, bidirectional=bidirectional, proj_size=12).eval()
    factored = factorize(copy.deepcopy(lstm), uniform_ranks(lstm, 0.5, snap=False))
    assert any(l.name.endswith(".hr") and l.rank for l in layers(factored))
    x = torch.randn(30, 20)
    for mod in (lstm, factored):
        with torch.no_grad():
            want = mod(x[:, None])[0][:, 0].numpy()
        for isa in _native.available_isas():
            stack = _native.LstmStack(encode(stack_entries(mod, "s")), "s", isa)
            assert (stack.proj_size, stack.state_size, stack.output_size) == (12, 12, 12 * (1 + bidirectional))
            assert abs(stack.forward(x.numpy()) - want).max() < 1e-5, isa
            if not bidirectional:
                steps = [stack.step(x[t].numpy()) for t in range(len(x))]
                assert abs(torch.tensor(np.stack(steps)).numpy() - want).max() < 1e-5, isa


def test_lstm_stacks_run_natively_inside_any_model(tmp_path):
    from export.generic import native_parity, write_native
    from pipeline import _native

    class Lm(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.rnn = nn.Embedding(10, 16), nn.LSTM(16, 48, num_layers=2, batch_first=True)

        def forward(self, ids):
            return self.rnn(self.embed(ids))[0]

    torch.manual_seed(0)
    model = Lm().eval()
    factored = factorize(copy.deepcopy(model), uniform_ranks(model, 0.5))
    assert max(native_parity(factored).values()) < 1e-4
    assert write_native(tmp_path / "lm.lrkm", factored) == ["rnn"]
    stack = _native.LstmStack(str(tmp_path / "lm.lrkm"), "rnn", "auto")
    x = torch.randn(20, 16)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(stack.forward(x.numpy())), factored.rnn(x[None])[0][0], atol=1e-4)


def _compress(out, task, *extra, target=("--target-compression", "2"), timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "tasks")}
    args = ["compress", "--task", task, "--out", str(out), *target, "--iterations", "2",
            "--episodes", "4", "--finetune-steps", "10", "--threads", "1", *extra]
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.mark.slow
def test_a_third_party_model_compresses_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "run"
    r = _compress(out, "toy:good")
    assert r.returncode == 0, r.stderr
    it = json.loads((out / "iterations.json").read_text())
    assert [h["iteration"] for h in it["history"]] == [1, 2]
    assert all(h["cost_ratio"] <= 1 / h["target"] + 1e-9 for h in it["history"])
    done = json.loads((out / "export" / "done.json").read_text())
    assert max(done["parity"]) < 1e-4 and {"fp32", "int8", "model_ort"} <= set(done["files"])
    bench = json.loads((out / "bench.json").read_text())
    assert {"dense (onnxruntime)", "compressed (onnxruntime int8)"} <= {row["label"] for row in bench["runs"]}
    assert "relative MSE" in (out / "report.md").read_text()
    summary = {"report.md", "iterations.json", "wer_vs_compression.png", "latency.png"}  # written again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in summary}
    r = _compress(out, "toy:good", "--resume")
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing searched, trained or measured again


@pytest.mark.parametrize("factory, message", [
    ("toy:no_layers", "no compressible layer"),
    ("toy:nan_metric", "evaluate(model) returned nan"),
    ("toy:raising_metric", "evaluate(model) raised RuntimeError: the user's metric broke"),
    ("toy:bad_inputs", "the model on example_inputs raised RuntimeError"),
    ("toy:bad_glob", "include glob 'encoder.*' matches no layer"),
    ("toy:missing", "toy has no callable 'missing'"),
    ("no_such_module:task", "cannot import no_such_module"),
])
def test_bad_input_from_the_user_is_one_clear_line_and_leaves_the_run_folder(tmp_path, factory, message):
    out = tmp_path / "run"
    r = _compress(out, factory)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, r.stderr
    if factory == "toy:raising_metric":
        assert "toy.py" in r.stderr and 'raise RuntimeError("the user\'s metric broke")' in r.stderr
    if factory in ("toy:nan_metric", "toy:raising_metric"):  # failed once the run had begun: it resumes to the same point
        again = _compress(out, factory, "--resume")
        assert again.returncode == 2 and again.stderr.strip().splitlines()[-1] == last
    else:  # refused before anything was written
        assert not (out / "config.json").exists()


@pytest.mark.slow
def test_the_character_language_model_example_compresses_exports_and_runs_natively(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    out = tmp_path / "lm"
    args = ["compress", "--task", "examples.char_lm.task:task", "--task-arg", f"data={corpus}", "--task-arg", "hidden=64",
            "--task-arg", "train_steps=60", "--task-arg", f"cache={tmp_path / 'cache'}", "--out", str(out),
            "--target-compression", "3", "--iterations", "1", "--episodes", "4", "--finetune-steps", "20",
            "--tolerance", "1", "--threads", "1"]
    r = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    done = json.loads((out / "export" / "done.json").read_text())
    assert max(done["parity"]) < 1e-4 and done["native_stacks"] == ["lstm"] and done["native_parity"]["lstm"] < 1e-4
    it = json.loads((out / "iterations.json").read_text())
    assert it["history"][0]["cost_ratio"] <= 1 / 3 + 1e-9
    labels = {row["label"] for row in json.loads((out / "bench.json").read_text())["runs"]}
    assert {"compressed LSTM stacks (native, 100 frames)", "compressed LSTM stacks (onnxruntime, 100 frames)"} <= labels


@pytest.mark.slow
def test_the_docs_example_runs_as_written_in_an_empty_folder(tmp_path):
    text = (ROOT / "docs" / "your-model.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "compress_mine.py").write_text(code)
    r = subprocess.run([sys.executable, "compress_mine.py"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "tagger" / "report.md").exists()
    assert (tmp_path / "runs" / "tagger" / "export" / "model.int8.onnx").exists()


@pytest.mark.slow
def test_a_latency_budget_for_any_model_uses_the_native_table_of_its_lstm_stacks(tmp_path):
    from pipeline.latency.cost import stack_latency_cost
    from pipeline.latency.table import lstm_cells
    from pipeline.search.agents import RandomAgent
    from pipeline.search.run import run_episode
    from pipeline.search.space import Approximator, RankSpace

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(16, 128, num_layers=2, bidirectional=True)
            self.head = nn.Linear(256, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    model = Tagger().eval()
    assert lstm_cells(model) == [("rnn.l0", 16, 128), ("rnn.l0_reverse", 16, 128), ("rnn.l1", 256, 128),
                                 ("rnn.l1_reverse", 256, 128)]
    chosen = select(model)
    cost = stack_latency_cost(model, chosen, progress=False)
    assert cost.reference == pytest.approx(sum(cost.table.cell(inp, h, 0, 0) for _, inp, h in lstm_cells(model)))
    assert cost.total({"head": 8}) == cost.reference  # the Linear is not in the native table's cost
    floor = cost.total({l.name: 32 for l in chosen if l.kind == "lstm_hh"})
    assert floor < cost.reference  # the recurrent matrices at a quarter of their rank cost less than dense
    space = RankSpace(model, cost, 1 + (cost.reference / floor - 1) / 2, min_fraction=0.25, layer_list=chosen)
    approx = Approximator(model, space.layers)
    for ep in range(4):
        policy, _ = run_episode(space, RandomAgent(seed=ep), approx, ep)
        assert cost.total(policy) <= space.budget * (1 + 1e-9)


@pytest.mark.slow
def test_a_latency_budget_without_native_stacks_uses_onnxruntime_per_layer(tmp_path):
    from toy import good, mlp

    from pipeline.latency.onnx_layers import OnnxLayerCost, call_shapes, validate

    task = good()  # every layer type: the rows and calls of each product come from the example inputs
    shapes = call_shapes(task.model, task.example_inputs, task.layers())
    assert shapes["inp"] == (20, 1) and shapes["gru.l0.ih"] == (20, 1) and shapes["gru.l0.hh"] == (1, 20)
    assert shapes["lstm.l1_reverse.hr"] == (1, 20) and shapes["cell.hh"] == (1, 1)
    task = mlp()
    cost = OnnxLayerCost(task.model, task.example_inputs, task.layers())
    assert cost.total({"0": 32, "2": 32}) < cost.reference / 2  # 6x fewer multiply-adds
    pairs = validate(task, cost, tmp_path / "v", n_policies=2, reps=5, log=lambda *_: None)
    assert len(pairs) == 2 and all(p["measured_ms"] > 0 and abs(p["error"]) < 1 for p in pairs)
    r = _compress(tmp_path / "run", "toy:mlp", target=("--target-speedup", "1.5"))
    assert r.returncode == 0, r.stderr
    it = json.loads((tmp_path / "run" / "iterations.json").read_text())
    assert all(h["cost_ratio"] <= 1 / h["target"] + 1e-9 for h in it["history"])


@pytest.mark.slow
def test_lowrank_bench_runs_any_models_stack_by_name(tmp_path, host_build):
    from export.generic import write_native

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(20, 48, num_layers=2, proj_size=12, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("enc", Encoder())
    model = factorize(model, uniform_ranks(model, 0.5, snap=False)).eval()
    assert write_native(tmp_path / "m.lrkm", model) == ["enc.rnn"]
    x = torch.randn(1, 9, 20)
    x.numpy().tofile(tmp_path / "x.bin")
    r = subprocess.run([str(host_build / "lowrank_bench"), "--weights", str(tmp_path / "m.lrkm"), "--stack", "enc.rnn",
                        "--input", str(tmp_path / "x.bin"), "--dump", str(tmp_path / "y.bin"), "--frames", "9",
                        "--reps", "2", "--warmup", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = model(x)[0].numpy()
    assert abs(np.fromfile(tmp_path / "y.bin", np.float32).reshape(want.shape) - want).max() < 1e-5
    r = subprocess.run([str(host_build / "lowrank_bench"), "--weights", str(tmp_path / "m.lrkm"), "--stack", "dec"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "dec.cells" in r.stderr


@pytest.mark.slow
def test_latency_table_and_validation_of_a_tasks_lstm_stacks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "tasks")}
    common = ["--task", "toy:tagger", "--frames", "20", "--reps", "2"]
    r = subprocess.run([sys.executable, "-m", "pipeline", "latency", "table", *common], capture_output=True,
                       text=True, timeout=900, env=env, cwd=ROOT)
    assert r.returncode == 0 and "us per frame" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "pipeline", "latency", "validate", *common, "--policies", "2",
                        "--out", str(tmp_path / "v.json")], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    pairs = json.loads((tmp_path / "v.json").read_text())["pairs"]
    assert len(pairs) == 2 and all(p["predicted_us"] > 0 and p["measured_us"] > 0 for p in pairs)
    assert all(name.startswith("rnn.l") for p in pairs for name in p["ranks"])


@pytest.mark.slow
def test_whispers_class_compresses_unchanged_through_the_task_api(tiny_corpus, tmp_path):
    """The path benchmarks/whisper_base.py runs on Whisper base, on a small random Whisper of the same class."""
    corpus, _ = tiny_corpus
    out = tmp_path / "whisper"
    args = ["compress", "--task", "examples.whisper.task:task", "--task-arg", "tiny=true", "--task-arg", f"data={corpus}",
            "--task-arg", "dev=6", "--task-arg", "subset=3", "--task-arg", "score=3", "--out", str(out),
            "--target-compression", "1.5", "--iterations", "1", "--episodes", "3", "--finetune-steps", "0",
            "--tolerance", "100", "--threads", "1"]
    r = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    it = json.loads((out / "iterations.json").read_text())
    assert it["history"][0]["cost_ratio"] <= 1 / 1.5 + 1e-9
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"dev", "test", "test_real"} and all("wer" in s["final"] for s in scores.values())
    done = json.loads((out / "export" / "done.json").read_text())
    assert max(done["parity"]) < 1e-3  # logits over 51,865 tokens
    labels = {row["label"] for row in json.loads((out / "bench.json").read_text())["runs"]}
    assert {"dense (onnxruntime)", "compressed (onnxruntime)"} <= labels


def test_the_ctranslate2_reader_refuses_other_files(tmp_path):
    from examples.whisper.ct2 import read_model_bin

    (tmp_path / "v5.bin").write_bytes((5).to_bytes(4, "little") + b"\0" * 8)
    with pytest.raises(ValueError, match="binary version 5"):
        read_model_bin(tmp_path / "v5.bin")
    (tmp_path / "short.bin").write_bytes((6).to_bytes(4, "little") + (40).to_bytes(2, "little") + b"Whisper")
    with pytest.raises(ValueError, match="truncated"):
        read_model_bin(tmp_path / "short.bin")
