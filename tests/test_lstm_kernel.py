"""The C++ LSTM kernels against PyTorch: dense and low-rank, both directions, batches, stacks,
streaming with state across calls, every SIMD path this CPU runs, and the aarch64 build under qemu."""
import copy
import json
import subprocess
import zlib

import numpy as np
import pytest
import torch
from conftest import QEMU
from torch import nn

from export import native
from pipeline import _native
from pipeline.lowrank import factorize
from pipeline.lowrank.modules import cell_name

ISAS = _native.available_isas()
SIZES = [1, 37, 100, 512]
RANKS = [1, 7, 64, "full", "dense"]
TOL = 1e-5


def make_lstm(inp, hidden, rank, bidirectional=False, layers=1, seed=0):
    """An nn.LSTM with gates large enough to saturate some units, factored at `rank` where asked."""
    torch.manual_seed(seed)
    holder = nn.Module()
    holder.lstm = nn.LSTM(inp, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    with torch.no_grad():
        for p in holder.lstm.parameters():
            p.uniform_(-1.5 / hidden ** 0.5, 1.5 / hidden ** 0.5)
    if rank != "dense":
        dirs = 2 if bidirectional else 1
        ranks = {}
        for layer in range(layers):
            n_in = inp if layer == 0 else hidden * dirs
            for d in range(dirs):
                for which, limit in (("ih", min(4 * hidden, n_in)), ("hh", min(4 * hidden, hidden))):
                    ranks[f"lstm.{cell_name(layer, d)}.{which}"] = limit if rank == "full" else min(rank, limit)
        factorize(holder, ranks)
    return holder.lstm.eval()


def torch_out(lstm, x):
    with torch.no_grad():
        return lstm(torch.from_numpy(x))[0].numpy()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hidden", SIZES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_utterance_matches_torch(isa, hidden, rank, bidirectional):
    lstm = make_lstm(hidden + 3, hidden, rank, bidirectional)
    x = np.random.default_rng(0).standard_normal((1, 23, hidden + 3)).astype(np.float32)
    got = native.stack(lstm, isa).forward(x[0])
    assert got.shape == (23, hidden * (2 if bidirectional else 1))
    assert np.abs(got - torch_out(lstm, x)[0]).max() <= TOL


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hidden,rank", [(37, 7), (100, "dense"), (512, 64)])
def test_streaming_carries_state_across_calls(isa, hidden, rank):
    lstm = make_lstm(hidden, hidden, rank, layers=2)
    x = np.random.default_rng(1).standard_normal((1, 30, hidden)).astype(np.float32)
    want = torch_out(lstm, x)[0]
    st = native.stack(lstm, isa)
    out = np.empty(hidden, np.float32)
    got = np.stack([st.step(frame, out=out).copy() for frame in x[0]])
    assert np.abs(got - want).max() <= TOL
    st.reset()  # a fresh utterance starts from zero state again
    assert np.abs(st.step(x[0, 0]) - want[0]).max() <= TOL
    assert np.abs(st.step(x[0, 1]) - want[1]).max() <= TOL


def test_step_into_a_buffer_and_by_conversion_agree():
    """A float32 frame into the caller's buffer (the checks on the arrays' own fields) and any other
    frame (converted: float64, a tensor, a strided view) give the same state and output."""
    lstm = make_lstm(24, 32, 8)
    x = np.random.default_rng(4).standard_normal((6, 48)).astype(np.float32)[:, ::2]  # strided rows
    fast, general = native.stack(lstm), native.stack(lstm)
    out = np.empty(32, np.float32)
    for t, frame in enumerate(x):
        assert fast.step(np.ascontiguousarray(frame), out) is out
        other = (frame.astype(np.float64), torch.from_numpy(frame.copy()), frame)[t % 3]
        np.testing.assert_array_equal(general.step(other), out)
    with pytest.raises(ValueError, match="writable"):
        fast.step(np.ascontiguousarray(x[0]), np.empty(31, np.float32))
    frozen = np.empty(32, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        fast.step(np.ascontiguousarray(x[0]), frozen)
    with pytest.raises(ValueError, match="input 24"):
        fast.step(np.zeros(23, np.float32), out)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch", [2, 5, 8])
def test_batches(isa, batch):
    lstm = make_lstm(40, 64, 16, bidirectional=True, layers=3)
    x = np.random.default_rng(2).standard_normal((batch, 17, 40)).astype(np.float32)
    assert np.abs(native.stack(lstm, isa).forward(x) - torch_out(lstm, x)).max() <= TOL
    uni = make_lstm(40, 64, 16, layers=2)
    want, st = torch_out(uni, x), native.stack(uni, isa)
    got = np.stack([st.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    assert np.abs(got - want).max() <= TOL
    with pytest.raises(ValueError, match="batch size changed"):
        st.step(x[:1, 0])


def test_activations_relative_error():
    x = np.concatenate([np.linspace(-30, 30, 200_001), np.geomspace(1e-8, 30, 2000)]).astype(np.float32)
    x = np.concatenate([x, -x])
    xd = x.astype(np.float64)
    sig, tanh = 1 / (1 + np.exp(-xd)), np.tanh(xd)
    for isa in ISAS:
        assert (np.abs(_native.sigmoid(x, isa) - sig) / sig).max() <= 1e-6, isa
        assert (np.abs(_native.tanh(x, isa) - tanh) / np.abs(tanh)).max() <= 1e-6, isa


def test_bad_inputs_give_clear_errors():
    lstm = make_lstm(8, 4, "dense", bidirectional=True)
    st = native.stack(lstm)
    with pytest.raises(ValueError, match="input size 9"):
        st.forward(np.zeros((3, 9), np.float32))
    with pytest.raises(ValueError, match="unidirectional"):
        st.step(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="not available"):
        native.stack(lstm, "sse9")
    entries = native.stack_entries(lstm)
    entries["encoder.1.hh"] = np.zeros((12, 4), np.float32)
    with pytest.raises(ValueError, match="<bytes>: stack 'encoder': layer 0 \\(reverse\\), hh: shape 12x4, expected 16x4"):
        _native.LstmStack(native.encode(entries))
    with pytest.raises(ValueError, match="missing entry 'decoder.lstm.cells'"):
        _native.LstmStack(native.encode(entries), "decoder.lstm")


def test_encoder_of_factored_model_matches_torch(overfit):
    """The whole encoder LSTM stack of a factored model, on real utterances."""
    model, _, rows, batch, _, _ = overfit
    model = factorize(copy.deepcopy(model), {"encoder.lstms.0.fwd.l0.ih": 16, "encoder.lstms.1.bwd.l0.hh": 24})
    feats, lengths = batch[0], batch[1]
    st = native.stack(model.encoder)
    for i in range(len(rows)):
        f = feats[i, : lengths[i]]
        with torch.no_grad():
            want = model.encode(f[None], lengths[i:i + 1])[0][0]
        assert torch.abs(native.encode_native(model, f, st) - want).max() <= TOL


# ---- the standalone benchmark, on this machine and on aarch64 under qemu ----------------------------

def bench(binary, *args, prefix=()):
    res = subprocess.run([*prefix, str(binary), *map(str, args)], capture_output=True, text=True, timeout=300)
    return res


def check_bench_matches(tmp_path, binary, lstm, mode, prefix=(), isa="auto", batch=1, frames=9):
    inp = lstm.input_size
    x = np.random.default_rng(3).standard_normal((batch, frames, inp)).astype(np.float32)
    native.write_stack(tmp_path / "w.bin", lstm)
    x.tofile(tmp_path / "x.bin")
    res = bench(binary, "--weights", tmp_path / "w.bin", "--input", tmp_path / "x.bin", "--dump", tmp_path / "y.bin",
                "--frames", frames, "--batch", batch, "--mode", mode, "--reps", 2, "--warmup", 0, "--isa", isa,
                prefix=prefix)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    want = torch_out(lstm, x)
    y = np.fromfile(tmp_path / "y.bin", np.float32)
    if mode == "stream":  # frame-major: (frames, batch, hidden)
        y = y.reshape(frames, batch, -1).transpose(1, 0, 2)
    assert np.abs(y.reshape(want.shape) - want).max() <= TOL
    return report


@pytest.mark.parametrize("mode", ["utterance", "stream"])
def test_lowrank_bench_runs_weights_file(tmp_path, host_build, mode):
    lstm = make_lstm(48, 64, 16, layers=2, bidirectional=mode == "utterance")
    report = check_bench_matches(tmp_path, host_build / "lowrank_bench", lstm, mode, batch=2)
    assert report["isa"] == _native.best_isa() and report["us_per_frame"]["median"] > 0
    assert report["recurrent_weight_bytes"] == 4 * 16 * (256 + 64) * (4 if mode == "utterance" else 2)


def test_lowrank_bench_rejects_bad_weight_files(tmp_path, host_build):
    """The loader checks the checksum, then every declared size against the bytes left before it allocates."""
    native.write_stack(tmp_path / "w.bin", make_lstm(8, 4, 2))
    raw = (tmp_path / "w.bin").read_bytes()
    body = raw[:-4]

    def sealed(b):  # a structurally bad file with a valid checksum, so that the reader gets to the structure
        return b + zlib.crc32(b).to_bytes(4, "little")

    first = 12 + 4 + len("encoder.directions") + 1 + 4  # the first entry's dims
    huge = body[:first] + (1 << 20).to_bytes(4, "little") + body[first + 4:]
    twice = native.encode({"encoder.cells": np.array([1], np.int32)})[:-4]
    twice = twice[:8] + (2).to_bytes(4, "little") + twice[12:] + twice[12:]
    cases = {"corrupted": (raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "checksum mismatch"),
             "truncated": (sealed(body[:-10]), "truncated"), "foreign": (b"PK\x03\x04" + raw[4:], "magic"),
             "trailing": (sealed(body + b"\0" * 4), "trailing bytes"),
             "huge": (sealed(huge), "declares more values than the file"),
             "twice": (sealed(twice), "entry 'encoder.cells' appears twice"),
             "version": (raw[:4] + (7).to_bytes(4, "little") + raw[8:], "format version 7")}
    for name, (blob, message) in cases.items():
        (tmp_path / name).write_bytes(blob)
        res = bench(host_build / "lowrank_bench", "--weights", tmp_path / name)
        assert res.returncode == 2 and message in res.stderr and name in res.stderr, (name, res.stderr)
    res = bench(host_build / "lowrank_bench", "--weights", tmp_path / "missing.bin")
    assert res.returncode == 2 and "cannot open" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("hidden", SIZES)
def test_aarch64_neon_and_scalar_match_torch_under_qemu(tmp_path, aarch64_build, hidden):
    binary = aarch64_build / "lowrank_bench"
    for rank in RANKS:
        lstm = make_lstm(hidden + 3, hidden, rank, bidirectional=True)
        report = check_bench_matches(tmp_path, binary, lstm, "utterance", prefix=QEMU, frames=5)
        assert report["isa"] == "neon-dotprod" and report["build"]["arch"] == "aarch64"  # qemu's default core: max
    uni = make_lstm(hidden, hidden, 7, layers=2)
    check_bench_matches(tmp_path, binary, uni, "stream", prefix=QEMU, batch=3, frames=6)
    check_bench_matches(tmp_path, binary, uni, "utterance", prefix=QEMU, isa="scalar", batch=2, frames=4)
    check_bench_matches(tmp_path, binary, uni, "stream", prefix=(QEMU[0], "-cpu", "cortex-a53", *QEMU[1:]))
