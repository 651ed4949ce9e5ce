"""Benchmark stage: targets (local, a real sshd on 127.0.0.1, qemu), their errors, and the latency table's
cache (reused; invalidated when the kernel changes) and predictions."""
import os
import shutil
import socket
import stat
import statistics
import subprocess
import time

import pytest
import torch
from conftest import SMALL

from pipeline.errors import PipelineError
from pipeline.latency import table as latency_table
from pipeline.latency import targets
from pipeline.latency.cost import CostModel
from pipeline.latency.table import LatencyTable, encoder_cells
from pipeline.latency.targets import Runner, parse_target
from pipeline.lowrank import uniform_ranks
from pipeline.model.asr import ASRModel
from pipeline.search.space import searchable

SYNTH = ["--synthetic", "1,1,32,16,8,8", "--frames", "20", "--reps", "2", "--warmup", "0"]


def test_local_target_reports_latency():
    rep = Runner("local").bench(SYNTH)
    assert rep["us_per_frame"]["median"] > 0 and rep["hidden"] == 16 and rep["emulated"] is False


@pytest.mark.slow
def test_qemu_target_runs_the_aarch64_build_and_flags_it_emulated():
    rep = Runner("qemu-aarch64").bench(SYNTH)
    assert rep["build"]["arch"] == "aarch64" and rep["isa"] == "neon-dotprod" and rep["emulated"] is True


def test_bad_target_specs():
    for spec in ("ftp://x", "ssh://", "local2"):
        with pytest.raises(PipelineError, match="expected local"):
            parse_target(spec)
    assert parse_target("ssh://pi@board:2222").port == 2222 and parse_target("adb:emulator-5554").serial == "emulator-5554"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path, monkeypatch):
    """A real sshd on 127.0.0.1 for this test only, with its own host key and a client key."""
    if not shutil.which("/usr/sbin/sshd"):
        pytest.fail("openssh-server is not installed (scripts/install-system-deps.sh installs it)")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client.pub").read_text())
    port = _free_port()
    (tmp_path / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\nPidFile {tmp_path / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nUsePAM no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    os.chmod(tmp_path / "client", stat.S_IRUSR | stat.S_IWUSR)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp_path / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    monkeypatch.setenv("PIPELINE_SSH_OPTS", f"-i {tmp_path / 'client'} -o UserKnownHostsFile={tmp_path / 'known_hosts'}")
    yield f"ssh://root@127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_ssh_target_against_a_real_sshd(sshd, tmp_path):
    from export.native import write_stack

    runner = Runner(sshd)
    assert runner.arch == os.uname().machine and runner.remote_bin.startswith(".cache/lrk-bench/")
    assert runner.bench(SYNTH)["us_per_frame"]["median"] > 0
    model = ASRModel(SMALL)
    write_stack(tmp_path / "w.bin", model.encoder)
    rep = runner.bench(["--frames", "10", "--reps", "2"], weights=tmp_path / "w.bin")
    assert rep["layers"] == SMALL.enc_layers and rep["directions"] == 2
    assert Runner(sshd).remote_bin == runner.remote_bin  # installed once, found again


@pytest.mark.slow
def test_bench_run_whole_model_on_ssh_and_qemu_targets(overfit, sshd, tmp_path):
    """On a remote target the whole model runs natively (`lowrank_bench --model`) and transcribes
    real utterances as PyTorch does; qemu's timings are flagged as emulated."""
    from pipeline.atomic import write_jsonl
    from pipeline.bench import bench
    from pipeline.lowrank.checkpoint import save_checkpoint

    model, cmvn, rows, _, _, hyps = overfit
    save_checkpoint(tmp_path / "m.safetensors", model, cmvn)
    write_jsonl(tmp_path / "m.jsonl", rows[:2])
    for target, emulated in ((sshd, False), ("qemu-aarch64", True)):
        r = bench(tmp_path / "m.safetensors", tmp_path / "m.jsonl", "native", target, utterances=2, reps=1)
        assert r["transcripts"] == hyps[:2] and r["emulated"] == emulated and r["median_ms"] > 0


def test_unreachable_ssh_target(monkeypatch):
    monkeypatch.setenv("PIPELINE_SSH_OPTS", "-o ConnectTimeout=3")
    with pytest.raises(PipelineError, match=r"ssh://root@127.0.0.1:\d+: unreachable"):
        Runner(f"ssh://root@127.0.0.1:{_free_port()}")


def test_binary_of_another_architecture_and_garbage_output(monkeypatch, tmp_path):
    arm = targets.binary_for("aarch64")
    monkeypatch.setattr(targets, "binary_for", lambda arch: arm)
    with pytest.raises(PipelineError, match="built for x86_64 does not run there|does not run there"):
        Runner("local").bench(SYNTH)
    junk = tmp_path / "junk"
    junk.write_text("#!/bin/sh\necho 'hello, not json'\n")
    junk.chmod(0o755)
    monkeypatch.setattr(targets, "binary_for", lambda arch: junk)
    with pytest.raises(PipelineError, match="returned no latency report"):
        Runner("local").bench(SYNTH)


def test_latency_table_is_cached_and_invalidated_by_the_kernel_version(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = ASRModel(SMALL)
    table = LatencyTable(frames=10, reps=1, cache_dir=tmp_path)
    first = table.measure(model, progress=False)
    assert first > 0 and table.path.exists()
    again = LatencyTable(frames=10, reps=1, cache_dir=tmp_path)
    assert again.measure(model, progress=False) == 0 and again.predict(model) == pytest.approx(table.predict(model))
    assert again.predict(model) > 0 and len(encoder_cells(model)) == 2 * SMALL.enc_layers
    stream = [k for k in table.entries if k.startswith("stream:")]  # the decoder's cells, one step at a time
    assert stream and all(k.startswith(f"stream:{SMALL.embed_dim + 2 * SMALL.enc_hidden},{SMALL.dec_hidden},")
                          for k in stream)
    assert again.predict(model, 0.5) > again.predict(model)
    monkeypatch.setattr(latency_table, "kernel_version", lambda: "another-kernel")
    changed = LatencyTable(frames=10, reps=1, cache_dir=tmp_path)
    assert changed.path != table.path and changed.measure(model, progress=False) == first


def test_table_predicts_between_grid_points():
    table = LatencyTable.__new__(LatencyTable)
    table.path, table.calibration = "t.json", {}
    table.entries = {f"128,64,{a},{b}": [float(a + b)] for a in (0, 32, 64, 96, 128) for b in (0, 32, 64)}
    assert table.cell(128, 64, 32, 32) == 64.0 and table.cell(128, 64, 40, 32) == 72.0  # linear between 32 and 64
    assert table.cell(128, 64, 8, 0) == 32.0  # below the first grid rank: the first grid rank
    with pytest.raises(PipelineError, match="no entry"):
        table.cell(128, 16, 8, 8)


def test_bench_run_end_to_end_for_each_runtime(overfit, tmp_path):
    """`bench` times the same utterances in every runtime, and they transcribe them alike."""
    import json

    from conftest import run_cli

    from pipeline.atomic import write_jsonl
    from pipeline.bench import bench, side_by_side
    from pipeline.lowrank.checkpoint import save_checkpoint

    model, cmvn, rows, _, _, _ = overfit
    save_checkpoint(tmp_path / "m.safetensors", model, cmvn)
    write_jsonl(tmp_path / "m.jsonl", rows)
    results = [bench(tmp_path / "m.safetensors", tmp_path / "m.jsonl", rt, utterances=4, reps=2)
               for rt in ("torch", "native", "onnx")]
    pair = side_by_side([("native", tmp_path / "m.safetensors"), ("torch", tmp_path / "m.safetensors")],
                        tmp_path / "m.jsonl", utterances=4, reps=2)
    assert [r["runtime"] for r in pair] == ["native", "torch"]
    for r in pair:  # the passes a speedup is taken over
        assert len(r["pass_ms"]) == 2 and r["median_ms"] == statistics.median(r["pass_ms"])
    for r in results + pair:
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and 0 < r["rtf"] < 1 and r["threads"] == 1
        assert r["transcripts"] == [row["text"] for row in rows]  # the overfit model gets them exactly
    res = run_cli("bench", "--model", str(tmp_path / "m.safetensors"), "--manifest", str(tmp_path / "m.jsonl"),
                  "--utterances", "2", "--reps", "2", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"median_ms", "p90_ms", "rtf", "runtime", "target", "threads"} <= set(out) and out["target"] == "local"
    res = run_cli("bench", "--model", str(tmp_path / "m.safetensors"), "--manifest", str(tmp_path / "m.jsonl"),
                  "--target", "qemu-aarch64", "--runtime", "torch")
    assert res.returncode == 2 and "only the native runtime runs on a remote target" in res.stderr


def test_speedup_is_taken_over_passes_timed_together():
    from pipeline.bench import speedup

    # The second pass fell in a slow spell for both: the ratio of the medians (45 / 10 = 4.5) would pair
    # the third pass's dense time with the first's compressed one.
    assert speedup([30.0, 60.0, 45.0], [10.0, 20.0, 9.0]) == (3.0, 3.0, 5.0)
    assert speedup([4.0, 9.0], [2.0, 3.0]) == (2.5, 2.0, 3.0)
    with pytest.raises(ValueError):
        speedup([1.0, 2.0], [1.0])


def test_cost_kinds_rank_policies_and_need_their_inputs(tmp_path):
    """The search's cost of a policy, by parameters, MACs and the measured latency table."""
    torch.manual_seed(0)
    dense = ASRModel(SMALL)
    searched = searchable(dense)
    quarter = uniform_ranks(dense, 0.25)
    table = LatencyTable(frames=10, reps=1, cache_dir=tmp_path)
    table.measure(dense, progress=False)
    for kind in ("params", "macs", "latency"):
        cost = CostModel(dense, searched, kind, table)
        assert 0 < cost.total(quarter) < cost.reference, kind
    assert CostModel(dense, searched, "params").reference == sum(m * n for m, n in (l.shape for l in searched))
    with pytest.raises(PipelineError, match="needs a latency table"):
        CostModel(dense, searched, "latency")
    with pytest.raises(PipelineError, match="choose one of"):
        CostModel(dense, searched, "flops")


def test_onnxruntime_table_measures_and_validates(tmp_path, monkeypatch):
    monkeypatch.setattr(latency_table, "RUNS", 1)
    torch.manual_seed(0)
    model = ASRModel(SMALL)
    table = LatencyTable(runtime="onnx", frames=30, reps=3, cache_dir=tmp_path)
    assert table.measure(model, progress=False) > 0 and "onnx" in table.path.name
    pairs = latency_table.validate(model, table, n_policies=2, log=lambda *_: None)
    assert len(pairs) == 2 and all(p["measured_us"] > 0 and p["predicted_us"] > 0 for p in pairs)
    with pytest.raises(PipelineError, match="this machine only"):
        LatencyTable("qemu-aarch64", runtime="onnx", cache_dir=tmp_path)
