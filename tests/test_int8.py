"""The int8 runtime: LSTM stacks and whole models with their weight matrices in int8 on every SIMD
path this CPU runs, against a float64 model of the same quantised arithmetic and against PyTorch;
int8 model files (format 3) and their faults; the CLI, the benchmark and the latency table in int8.
The kernels themselves, on every path and on aarch64 under qemu: test_native_asr.py (kernel_check)."""
import json
import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch
from conftest import QEMU, run_cli
from test_lstm_kernel import ISAS, make_lstm, torch_out

from export import native
from pipeline import _native
from pipeline.data.audio import load_audio, resample
from pipeline.errors import PipelineError
from pipeline.latency.table import LatencyTable
from pipeline.lowrank.checkpoint import save_checkpoint
from pipeline.search.run import SearchConfig

INT8 = native.Precision(True)


def _quantized(x):
    """Each row of x as the runtime quantises activations: q = round(x * 127 / max|x|) (ties to even,
    in float32), and its scale."""
    x = np.asarray(x, np.float32)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    inv = np.where(peak > 0, np.float32(127) / np.where(peak > 0, peak, 1), 0).astype(np.float32)
    return np.rint(x * inv), (peak / np.float32(127)).astype(np.float64)


def _product(x, q, scale):
    """x . W^T with x quantised per row and W = q x scale (int8 rows), the sums exact, in float64."""
    xq, xs = _quantized(x)
    return (xq.astype(np.float64) @ q.T.astype(np.float64)) * xs * scale.astype(np.float64)


def _reference_cell(lstm, x):
    """A dense one-direction, one-layer LSTM in float64, every matrix product in the runtime's int8."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    (wq, ws), (uq, us) = (native.quantize_rows(w.detach().numpy()) for w in (lstm.weight_ih_l0, lstm.weight_hh_l0))
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().double().numpy()
    h, c, out = np.zeros(lstm.hidden_size), np.zeros(lstm.hidden_size), []
    for t in range(x.shape[0]):
        g = _product(x[t:t + 1], wq, ws)[0] + bias + (_product(h[None].astype(np.float32), uq, us)[0] if t else 0)
        i, f, gg, o = np.split(g, 4)
        c = sig(f) * c + sig(i) * np.tanh(gg)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.array(out)


@pytest.mark.parametrize("isa", ISAS)
def test_int8_cell_is_the_quantised_arithmetic(isa):
    """Per-row int8 weights, per-vector int8 activations, exact integer sums and float gates: the
    native stack against the same arithmetic in float64, to float32 rounding."""
    lstm = make_lstm(45, 37, "dense")
    x = np.random.default_rng(3).standard_normal((6, 45)).astype(np.float32)
    got = native.stack(lstm, isa, INT8).forward(x)
    assert np.abs(got - _reference_cell(lstm, x)).max() <= 1e-4
    assert np.abs(got - native.stack(lstm, isa).forward(x)).max() > 1e-4  # it is not the float path


@pytest.mark.parametrize("hidden,rank,bidirectional", [(37, 7, True), (100, "dense", False), (512, 64, True),
                                                       (64, "full", True)])
def test_int8_stacks_agree_across_paths_and_stay_close_to_torch(hidden, rank, bidirectional):
    lstm = make_lstm(hidden + 3, hidden, rank, bidirectional, layers=2)
    x = np.random.default_rng(0).standard_normal((1, 23, hidden + 3)).astype(np.float32)
    want = torch_out(lstm, x)[0]
    outs = [native.stack(lstm, isa, INT8).forward(x[0]) for isa in ISAS]
    for got in outs:
        assert np.abs(got - want).max() <= 0.02
        assert np.abs(got - outs[-1]).max() <= 1e-3  # the same integer sums; gates differ in the last bits


@pytest.mark.parametrize("isa", ISAS)
def test_int8_streaming_matches_int8_utterance_mode(isa):
    lstm = make_lstm(48, 64, 16, layers=2)
    x = np.random.default_rng(1).standard_normal((20, 48)).astype(np.float32)
    whole = native.stack(lstm, isa, INT8).forward(x)
    st = native.stack(lstm, isa, INT8)
    steps = np.stack([st.step(frame) for frame in x])
    assert np.abs(steps - whole).max() <= 1e-5


def test_int8_entries_and_what_stays_float():
    """A quantised matrix is NAME.q (int8) and NAME.scale; keep_float globs and the attention's
    element-wise matrices stay float; q x scale gives the rows back to half a step."""
    lstm = make_lstm(20, 16, 8)
    entries = native.stack_entries(lstm, precision=native.Precision(True, keep_float=["encoder.0.hh"]))
    assert entries["encoder.0.ih.U.q"].dtype == np.int8 and entries["encoder.0.ih.V.scale"].dtype == np.float32
    assert "encoder.0.hh.U" in entries and "encoder.0.hh.U.q" not in entries
    u = lstm.cells["l0"].ih.U.detach().numpy()
    q, s = entries["encoder.0.ih.U.q"], entries["encoder.0.ih.U.scale"]
    assert np.abs(q).max() == 127 and q.min() >= -127
    assert np.abs(q * s[:, None] - u).max() <= s.max() / 2 + 1e-7
    assert native.Precision(True)("decoder.energy") is False and native.Precision(True)("decoder.out")
    assert native.int8_error(u, q, s) < 0.01
    wide = make_lstm(512, 16, "dense")
    with torch.no_grad():  # one outlying weight per wide row leaves the rest few int8 levels: the rule keeps it float
        wide.weight_ih_l0[:, 0] = 20 * wide.weight_ih_l0.abs().max()
    entries = native.stack_entries(wide, precision=INT8)
    assert "encoder.0.ih" in entries and "encoder.0.hh.q" in entries
    _native.LstmStack(native.encode(entries))  # a file may mix int8 and float matrices


def test_model_file_format_3_and_old_files(overfit, tmp_path):
    """int8 files are smaller and load as int8; version 2 files (no int8 type) still load; faults of
    the int8 entries name the file and the entry."""
    model, cmvn = overfit[0], overfit[1]
    fp32, int8 = native.model_entries(model, cmvn), native.model_entries(model, cmvn, precision=INT8)
    assert len(native.encode(int8)) < 0.4 * len(native.encode(fp32))
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert _native.Asr(native.encode(int8)).transcribe(audio)["frames"] > 0

    body = native.encode(fp32)[:-4]
    v2 = body[:4] + struct.pack("<I", 2) + body[8:]
    assert _native.Asr(v2 + struct.pack("<I", zlib.crc32(v2))).transcribe(audio)["frames"] > 0
    body = native.encode(int8)[:-4]
    v2 = body[:4] + struct.pack("<I", 2) + body[8:]
    with pytest.raises(ValueError, match="type must be 'f' or 'i'"):
        _native.Asr(v2 + struct.pack("<I", zlib.crc32(v2)))

    def refused(change, message):
        broken = dict(int8)
        change(broken)
        with pytest.raises(ValueError, match=message):
            _native.Asr(native.encode(broken))

    name = "decoder.out"
    refused(lambda e: e.__setitem__(name + ".q", np.full_like(e[name + ".q"], -128)),
            f"<bytes>: entry '{name}.q': value 0 is -128")
    refused(lambda e: e.__setitem__(name + ".scale", e[name + ".scale"][:-1]), f"entry '{name}.scale': .* scales for")
    refused(lambda e: e.__setitem__(name + ".scale", -e[name + ".scale"] - 1), f"entry '{name}.scale': row 0 has a negative or huge")
    refused(lambda e: e.__setitem__(name + ".q", e[name + ".q"].astype(np.float32)), f"entry '{name}.q': expected int8")


def test_cli_int8_export_transcribe_and_standalone_runs(overfit, host_build, tmp_path, speech_wav):
    model, cmvn = overfit[0], overfit[1]
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, model, cmvn)
    res = run_cli("export", "--model", str(ckpt), "--out", str(tmp_path / "exp"), "--native", "--int8")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "exp" / "model.int8.lrkm").stat().st_size < 0.4 * (tmp_path / "exp" / "model.lrkm").stat().st_size
    res = run_cli("transcribe", "--model", str(ckpt), "--native", "--int8", str(speech_wav[0]))
    assert res.returncode == 0, res.stderr
    text = res.stdout.rstrip("\n").split("\t")[1]
    assert text == native.NativeAsr(model, cmvn, precision=INT8).transcribe(speech_wav[1], speech_wav[2])
    raw = tmp_path / "speech.f32"
    np.ascontiguousarray(resample(speech_wav[1], speech_wav[2]), "<f4").tofile(raw)
    out = subprocess.run([str(host_build / "lowrank_bench"), "--model", str(tmp_path / "exp" / "model.int8.lrkm"),
                          "--raw-audio", str(raw), "--reps", "1", "--warmup", "0"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["text"] == text
    res = run_cli("transcribe", "--model", str(ckpt), "--int8", str(speech_wav[0]))
    assert res.returncode == 2 and "--int8 and --keep-float go with --native" in res.stderr


@pytest.mark.slow
def test_int8_model_file_on_aarch64_under_qemu(overfit, aarch64_build, tmp_path):
    """The whole int8 model on aarch64, with sdot and without, transcribes real speech as this CPU does."""
    model, cmvn, rows = overfit[0], overfit[1], overfit[2]
    native.write_model(tmp_path / "m.lrkm", model, cmvn, precision=INT8)
    audio, sr = load_audio(rows[0]["audio_filepath"])
    samples = np.ascontiguousarray(resample(audio, sr), "<f4")
    samples.tofile(tmp_path / "a.f32")
    want = native.NativeAsr(model, cmvn, precision=INT8).run(samples)["text"]
    assert want == rows[0]["text"]  # the overfit model, in int8 too
    for cpu, isa in (("max", "neon-dotprod"), ("cortex-a53", "neon")):
        out = subprocess.run([QEMU[0], "-cpu", cpu, *QEMU[1:], str(aarch64_build / "lowrank_bench"), "--model",
                              str(tmp_path / "m.lrkm"), "--raw-audio", str(tmp_path / "a.f32"), "--reps", "1",
                              "--warmup", "0"], capture_output=True, text=True, check=True, timeout=600).stdout
        report = json.loads(out)
        assert report["isa"] == isa and report["text"] == want


def test_lowrank_bench_precision_flag(host_build):
    args = [str(host_build / "lowrank_bench"), "--synthetic", "1,1,64,64,16,16", "--frames", "5", "--reps", "1"]
    fp32, int8 = (json.loads(subprocess.run(args + ["--precision", p], capture_output=True, text=True,
                                            check=True).stdout) for p in ("fp32", "int8"))
    assert int8["precision"] == "int8" and int8["recurrent_weight_bytes"] < fp32["recurrent_weight_bytes"] / 3
    res = subprocess.run(args + ["--precision", "int4"], capture_output=True, text=True)
    assert res.returncode == 2 and "--precision is file, fp32 or int8" in res.stderr


def test_latency_table_and_search_know_the_precision(tmp_path):
    table = LatencyTable("local", precision="int8", frames=5, reps=1, cache_dir=tmp_path)
    assert "native-int8" in table.path.name
    assert table.measure_shapes([(24, 16, "utterance")], progress=False) > 0
    assert all(v and min(v) > 0 for v in table.entries.values())
    with pytest.raises(PipelineError, match="int8 latency is measured with the native kernels"):
        LatencyTable("local", runtime="onnx", precision="int8")
    with pytest.raises(PipelineError, match="--precision int8: int8 latency is the native kernels'"):
        SearchConfig(target_speedup=2.0, runtime="onnx", precision="int8").validate()
    with pytest.raises(PipelineError, match="--precision 'int4'"):
        SearchConfig(target_compression=2.0, precision="int4").validate()


@pytest.mark.slow
def test_bench_int8_runtimes(overfit, tiny_corpus, tmp_path):
    model, cmvn = overfit[0], overfit[1]
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, model, cmvn)
    manifest = tiny_corpus[0] / "dev.jsonl"
    for runtime in ("native", "onnx"):
        res = run_cli("bench", "--model", str(ckpt), "--manifest", str(manifest), "--runtime", runtime,
                      "--precision", "int8", "--utterances", "2", "--reps", "1", "--json")
        assert res.returncode == 0, res.stderr
        r = json.loads(res.stdout)
        assert r["runtime"] == f"{runtime}-int8" and r["median_ms"] > 0
    res = run_cli("bench", "--model", str(ckpt), "--manifest", str(manifest), "--runtime", "torch", "--precision", "int8")
    assert res.returncode == 2 and "--precision int8" in res.stderr
