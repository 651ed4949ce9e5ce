"""The AutoML rank search: space and budget wall, agents, subset, resume after kill -9, CLI errors."""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import run_cli

from pipeline.errors import PipelineError
from pipeline.latency.cost import CostModel
from pipeline.lowrank import densify, factorize, uniform_ranks
from pipeline.model.config import ModelConfig
from pipeline.search.agents import DDPGAgent, RandomAgent, ReinforceAgent
from pipeline.search.run import SearchConfig, run_episode
from pipeline.search.space import STATE_DIM, Approximator, RankSpace, searchable
from pipeline.search.subset import spearman, stratified


def _space(model, target, kind="params", which="all"):
    return RankSpace(model, CostModel(model, searchable(model, which), kind), target, which=which)


@pytest.mark.parametrize("agent_cls", [RandomAgent, DDPGAgent, ReinforceAgent])
@pytest.mark.parametrize("kind,target", [("params", 2.0), ("params", 4.0), ("macs", 3.0)])
def test_every_episode_meets_its_budget(overfit, agent_cls, kind, target):
    model = overfit[0]
    space = _space(model, target, kind)
    approx = Approximator(model, space.layers)
    agent = agent_cls(seed=1) if agent_cls is RandomAgent else agent_cls(12, seed=1)
    for ep in range(12):
        policy, steps = run_episode(space, agent, approx, ep)
        assert space.cost.total(policy) <= space.budget * (1 + 1e-9)
        assert set(policy) == {l.name for l in space.layers}
        assert all(r is None or 8 <= r <= space.limits[n] and r % 8 == 0 for n, r in policy.items())
        assert len(steps) == len(space.layers) and all(s.shape == (STATE_DIM,) and 0 <= a <= 1 for s, a in steps)
        agent.observe(steps, -float(np.random.default_rng(ep).uniform()), ep)


def test_wall_gives_the_largest_rank_that_keeps_the_budget_reachable(overfit):
    space = _space(overfit[0], 2.0)
    decided = {}
    for i, layer in enumerate(space.layers):
        rest = {l.name: space.smallest[l.name] for l in space.layers[i + 1:]}
        assert space.wall(i, decided, 8) in (8, space.smallest[layer.name])  # never raised above the request
        r = space.wall(i, decided, None)  # every layer asks for dense
        assert space.cost.total({**decided, layer.name: r, **rest}) <= space.budget * (1 + 1e-9)
        ladder = space.candidates(layer)
        if r is not None and ladder.index(r) + 1 < len(ladder):
            bigger = ladder[ladder.index(r) + 1]
            assert space.cost.total({**decided, layer.name: bigger, **rest}) > space.budget
        decided[layer.name] = r
    assert space.cost.total(decided) <= space.budget * (1 + 1e-9)


def test_uniform_action_is_the_largest_that_meets_the_budget(overfit):
    space = _space(overfit[0], 2.5)
    a = space.uniform_action()
    at = lambda x: space.cost.total({l.name: space.rank_of(l, x) for l in space.layers})  # noqa: E731
    assert at(a) <= space.budget < at(min(1.0, a + 0.02)) or a > 0.98


def test_unreachable_target_is_a_clear_error(overfit):
    with pytest.raises(PipelineError, match="out of reach"):
        _space(overfit[0], 1000.0)
    with pytest.raises(PipelineError, match="above 1"):
        _space(overfit[0], 0.5)


def test_approximator_at_full_rank_is_the_model_and_follows_ranks(overfit):
    model, cmvn, rows, batch, *_ = overfit
    space = _space(model, 2.0)
    approx = Approximator(model, space.layers)
    feats, lengths = batch[0], batch[1]
    with torch.no_grad():
        ref, _, _ = model.encode(feats, lengths)
        full = approx.apply({l.name: None for l in space.layers}).encode(feats, lengths)[0]
        assert float((ref - full).abs().max()) < 1e-5
        policy = {l.name: 16 for l in space.layers if min(l.shape) > 16}
        twin_out = approx.apply(policy).encode(feats, lengths)[0]
        factored = factorize(copy.deepcopy(model), policy)
        assert float((twin_out - factored.encode(feats, lengths)[0]).abs().max()) < 1e-4
        # a policy that names one layer leaves no trace of the one before (greedy's probes rely on it)
        one = dict([next(iter(policy.items()))])
        alone = factorize(copy.deepcopy(model), one).encode(feats, lengths)[0]
        assert float((approx.apply(one).encode(feats, lengths)[0] - alone).abs().max()) < 1e-4
        assert float((approx.apply({}).encode(feats, lengths)[0] - ref).abs().max()) < 1e-5


def test_dense_twin_of_a_factored_model_computes_the_same(overfit):
    model, _, _, batch, *_ = overfit
    factored = factorize(copy.deepcopy(model), uniform_ranks(model, 0.5))
    with torch.no_grad():
        a = factored.encode(batch[0], batch[1])[0]
        b = densify(factored).encode(batch[0], batch[1])[0]
    assert float((a - b).abs().max()) < 1e-5


def test_spearman_and_stratified_subset():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    rows = [{"speaker": f"s{i % 7}", "duration": 1 + (i * 37 % 50) / 10, "text": "x"} for i in range(700)]
    sub = stratified(rows, 0.1)
    assert 60 <= len(sub) <= int(0.15 * len(rows))
    assert {r["speaker"] for r in sub} == {f"s{i}" for i in range(7)}
    durs = sorted(r["duration"] for r in sub)
    assert durs[0] < 1.6 and durs[-1] > 5.4  # the whole duration range
    with pytest.raises(PipelineError, match="fraction"):
        stratified(rows, 0.3)


def _search_args(files, out, *extra):
    return ["search", "--model", str(files / "model.safetensors"), "--subset", str(files / "subset.jsonl"),
            "--data", str(files),
            "--out", str(out), "--threads", "1", *extra]


@pytest.mark.slow
def test_tiny_search_end_to_end(search_files, tmp_path):
    out = tmp_path / "run"
    r = run_cli(*_search_args(search_files, out, "--target-compression", "2", "--episodes", "6"))
    assert r.returncode == 0, r.stderr
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(x["meets_budget"] and x["cost_ratio"] <= 0.5 + 1e-9 for x in log)
    best = json.loads((out / "best.json").read_text())
    assert best["best"]["reward"] == max(x["reward"] for x in log)
    for name in ("search.png", "best_ranks.png"):
        assert (out / name).stat().st_size > 1000
    r = run_cli("inspect", str(out / "best.safetensors"), "--json")
    assert r.returncode == 0, r.stderr
    totals = json.loads(r.stdout)["totals"]
    assert totals["model_params"] < totals["model_dense_params"]
    r = run_cli(*_search_args(search_files, tmp_path / "g", "--target-compression", "2", "--agent", "greedy"))
    assert r.returncode == 0, r.stderr
    glog = [json.loads(x) for x in (tmp_path / "g" / "log.jsonl").read_text().splitlines()]
    assert glog[-1]["kind"] == "episode" and glog[-1]["meets_budget"]


def _cache_keys(path):
    return [json.loads(x)["key"] for x in path.read_text().splitlines() if x.strip().endswith("}")]


@pytest.mark.slow
def test_resume_after_kill_repeats_no_evaluation(search_files, tmp_path):
    args = ["--target-compression", "2", "--episodes", "14", "--agent", "ddpg"]
    whole = tmp_path / "whole"
    assert run_cli(*_search_args(search_files, whole, *args)).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *_search_args(search_files, killed, *args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "cache.jsonl").exists() and len(_cache_keys(killed / "cache.jsonl")) >= 6:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    r = run_cli(*_search_args(search_files, killed, *args, "--resume"))
    assert r.returncode == 0, r.stderr
    keys = _cache_keys(killed / "cache.jsonl")
    assert len(keys) == len(set(keys)), "an evaluation was repeated after resume"
    a = [json.loads(x) for x in (whole / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines()]
    assert [(x["ranks"], x["metric"]) for x in a] == [(x["ranks"], x["metric"]) for x in b]


@pytest.mark.parametrize("extra,message", [
    ([], "exactly one of"),
    (["--target-compression", "2", "--target-speedup", "2"], "exactly one of"),
    (["--target-compression", "2", "--agent", "magic"], "--agent 'magic'"),
    (["--target-compression", "2", "--reward", "joy"], "--reward 'joy'"),
    (["--target-compression", "2", "--cost", "latency"], "--target-speedup"),
    (["--target-speedup", "2", "--cost", "params"], "--cost latency"),
    (["--target-compression", "2", "--episodes", "0"], "at least 1"),
    (["--target-compression", "500"], "out of reach"),
    (["--target-compression", "2", "--resume"], "nothing to resume"),
])
def test_bad_search_arguments_are_clear_errors(search_files, tmp_path, capsys, extra, message):
    from pipeline.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(_search_args(search_files, tmp_path / "bad", *extra)) == 2  # in-process: the same CLI, faster
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: "), err


@pytest.mark.slow
def test_missing_subset_and_changed_config_on_resume(search_files, tmp_path):
    r = run_cli("search", "--model", str(search_files / "model.safetensors"), "--subset", str(tmp_path / "no.jsonl"),
                "--out", str(tmp_path / "x"), "--target-compression", "2")
    assert r.returncode != 0 and "no.jsonl" in r.stderr and "pipeline subset" in r.stderr
    out = tmp_path / "run"
    assert run_cli(*_search_args(search_files, out, "--target-compression", "2", "--episodes", "2")).returncode == 0
    r = run_cli(*_search_args(search_files, out, "--target-compression", "3", "--episodes", "2", "--resume"))
    assert r.returncode != 0 and "target_compression" in r.stderr
    r = run_cli(*_search_args(search_files, out, "--target-compression", "2", "--episodes", "2", "--method", "svd",
                              "--resume"))
    assert r.returncode != 0 and "'search.method' is 'whitened' there, 'svd' now" in r.stderr
    saved = torch.load(out / "state.pt", weights_only=False)  # a saved agent of another state size
    first = next(iter(saved["agent"]["nets"][0]))
    saved["agent"]["nets"][0][first] = torch.zeros(3, 3)
    torch.save(saved, out / "state.pt")
    r = run_cli(*_search_args(search_files, out, "--target-compression", "2", "--episodes", "3", "--resume"))
    assert r.returncode == 2 and "state.pt: the saved ddpg agent does not fit" in r.stderr, r.stderr


@pytest.mark.parametrize("episodes", [20, 60, 200])
def test_ddpg_exploration_decays_to_its_floor_at_the_last_episode(episodes):
    from pipeline.search.agents import DDPGAgent

    agent = DDPGAgent(episodes)
    assert agent.sigma(agent.warmup) == pytest.approx(0.5)
    assert agent.sigma(episodes - 1) == pytest.approx(0.05)


def test_search_config_defaults():
    assert SearchConfig(target_compression=2).validate().cost == "params"
    assert SearchConfig(target_speedup=2).validate().cost == "latency"


def test_latency_cost_matches_the_table_and_speedup_episodes_meet_it(overfit, tmp_path):
    from pipeline.latency.table import LatencyTable

    model = overfit[0]
    table = LatencyTable(frames=10, reps=1, cache_dir=tmp_path)
    table.measure(model, progress=False)
    encoder_only = CostModel(model, searchable(model), "latency", table)
    assert encoder_only.reference == pytest.approx(table.predict(model))
    cost = CostModel(model, searchable(model), "latency", table, steps_per_frame=0.4)
    assert cost.reference == pytest.approx(table.predict(model, 0.4)) and cost.reference > encoder_only.reference
    decoder = {"decoder.lstm.l0.ih": 32, "decoder.lstm.l0.hh": 32}
    assert cost.total(decoder) < cost.reference and encoder_only.total(decoder) == encoder_only.reference
    space = RankSpace(model, cost, 1.3)
    approx = Approximator(model, space.layers)
    agent = RandomAgent(seed=3)
    for ep in range(5):
        policy, _ = run_episode(space, agent, approx, ep)
        assert cost.total(policy) <= space.budget * (1 + 1e-9)
        factored = factorize(copy.deepcopy(model), policy)
        assert cost.total(policy) == pytest.approx(table.predict(factored, 0.4), rel=1e-6)


def test_steps_per_frame_counts_characters_and_the_end_token():
    from pipeline.latency.table import steps_per_frame

    rows = [{"text": "abc", "duration": 1.0}, {"text": "a b", "duration": 1.0}]
    assert steps_per_frame(rows, ModelConfig(subsampling=2)) == pytest.approx(8 / 100)
    with pytest.raises(PipelineError, match="no audio"):
        steps_per_frame([{"text": "a", "duration": 0.0}], ModelConfig())


def test_subset_command_writes_a_checked_subset(search_files, tiny_corpus, tmp_path):
    from pipeline.data.manifest import read_manifest

    corpus, _ = tiny_corpus
    out = tmp_path / "sub" / "dev_subset.jsonl"
    out.parent.mkdir()
    r = run_cli("subset", "--model", str(search_files / "model.safetensors"), "--manifest", str(corpus / "dev.jsonl"),
                "--out", str(out), "--fraction", "0.15", "--policies", "4", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rows, dev = read_manifest(out), read_manifest(corpus / "dev.jsonl")  # paths resolve from the subset's folder
    assert 1 <= len(rows) <= 0.15 * len(dev) and {x["id"] for x in rows} <= {x["id"] for x in dev}
    check = json.loads(out.with_suffix(".json").read_text())
    assert check["policies"] == 4 and len(check["full_wer"]) == len(check["subset_wer"]) == 4
    assert check["spearman"] == pytest.approx(spearman(check["full_wer"], check["subset_wer"])) and "Spearman" in r.stdout


class _Constant(RandomAgent):
    def __init__(self, action):
        super().__init__()
        self.action = action

    def act(self, state, episode):
        return self.action


def test_relative_actions_centre_on_the_even_fraction(overfit):
    model = overfit[0]
    space = _space(model, 2.0, which="lstm")
    approx = Approximator(model, space.layers)
    uniform = {l.name: space.rank_of(l, space.uniform_action()) for l in space.layers}
    policy, steps = run_episode(space, _Constant(0.5), approx, 0)
    # 0.5 everywhere is the uniform policy, up to the snapping of ranks to multiples of 8
    assert all(abs((policy[n] or space.limits[n]) - (uniform[n] or space.limits[n])) <= 8 for n in policy)
    assert space.cost.total(policy) <= space.budget * (1 + 1e-9)
    assert all(abs(a - 0.5) < 0.2 for _, a in steps)
    small, _ = run_episode(space, _Constant(0.0), approx, 0)
    assert space.cost.total(small) < 0.8 * space.cost.total(policy)  # 0 asks for a third of the even fraction
    checked = 0
    for layer in space.layers:
        even = space.even_action(0, {})
        for a in (0.2, 0.5, 0.8):
            rank = space.rank_of(layer, space.absolute(a, even))
            if rank is None or rank == space.limits[layer.name]:
                continue  # dense: where a rank would save no parameters, the layer stays dense
            back = space.relative(layer, rank, even)
            assert abs(back - a) < 8 / space.limits[layer.name] / (2 * np.log(3.0) * 0.1) + 1e-6
            checked += 1
    assert checked >= len(space.layers)
