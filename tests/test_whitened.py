"""Data-aware (whitened) factorisation and layer-wise recovery, on every layer type."""
import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.lowrank import factorize, layers, select
from pipeline.lowrank.calibration import calibrate
from pipeline.lowrank.recovery import recover
from pipeline.search.space import Approximator

sys.path.insert(0, str(Path(__file__).parent / "tasks"))
from toy import Toy  # noqa: E402


def _inputs(seed=0, n=80, t=12):
    """Correlated inputs (a random mixing of few directions), so the whitened metric differs from plain."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, 4, generator=g) @ torch.randn(4, 12, generator=g) + 0.05 * torch.randn(n, t, 12, generator=g)


def _toy():
    torch.manual_seed(0)
    return Toy().eval()


def _full(model):
    return {l.name: min(l.shape) for l in layers(model)}


def _dense(model, layer):
    """The dense weight of one layer of a (possibly factored) model."""
    return Approximator(model, [layer]).original[layer.name]


def test_whitened_factors_reproduce_every_layer_type_exactly_at_full_rank():
    model, x = _toy(), _inputs()
    calib = calibrate(model, select(model), lambda: model(x))
    assert set(calib.covs) | set(calib.fallback) == {l.name for l in select(model)} and len(calib.covs) >= 12
    full = factorize(copy.deepcopy(model), _full(model), covs=calib.covs).eval()
    with torch.no_grad():
        assert torch.allclose(full(x), model(x), atol=1e-4)
    for l in layers(full):
        assert l.rank == min(l.shape)


def _error(w, wr, cov):
    d = (w - wr).double()
    return float(torch.trace(d @ cov @ d.t()))


@pytest.mark.parametrize("which", ["inp", "gru.l0.ih", "gru.l0.hh", "lstm.l1_reverse.ih", "lstm.l0.hh", "cell.ih"])
def test_at_every_rank_the_whitened_output_error_is_at_most_plain_svds(which):
    model, x = _toy(), _inputs()
    rows = {}
    layer = next(l for l in select(model) if l.name == which)
    calib = calibrate(model, [layer], lambda: model(x))
    raw = _raw_moment(model, layer, x)  # the error the model feels: on the inputs as they are, no ridge
    w = _dense(model, layer)
    wins = 0
    for r in range(1, min(layer.shape) + 1, 3):
        plain = factorize(copy.deepcopy(model), {which: r})
        white = factorize(copy.deepcopy(model), {which: r}, covs=calib.covs)
        e_plain = _error(w, _dense(plain, next(l for l in layers(plain) if l.name == which)), raw)
        e_white = _error(w, _dense(white, next(l for l in layers(white) if l.name == which)), raw)
        assert e_white <= e_plain * (1 + 1e-6) + 1e-9, (r, e_white, e_plain)
        wins += e_white < 0.9 * e_plain
        rows[r] = (e_plain, e_white)
    assert wins, rows  # somewhere it is clearly better, not just equal


def _raw_moment(model, layer, x):
    """E[x x^T] of the layer's inputs without the ridge: calibrate with the ridge set to zero."""
    import pipeline.lowrank.calibration as cal

    ridge, cal.RIDGE = cal.RIDGE, 0.0
    try:
        return cal.calibrate(model, [layer], lambda: model(x)).covs[layer.name]
    finally:
        cal.RIDGE = ridge


def test_degenerate_statistics_fall_back_to_plain_svd_and_say_why():
    model, x = _toy(), _inputs()
    calib = calibrate(model, select(model), lambda: model(x))
    # the cells are called without a state: their W_hh never sees an input
    assert "never" not in calib.fallback.get("cell.hh", "never") and "no calibration input" in calib.fallback["cell.hh"]
    assert "projection" in calib.fallback["lstm.l0.hr"]
    few = calibrate(model, select(model), lambda: model(x[:1, :2]))
    assert "fewer than" in few.fallback["inp"]
    zero = calibrate(model, select(model, include=["inp"]), lambda: model(torch.zeros_like(x)))
    assert zero.fallback["inp"] == "all-zero inputs"
    bad = calibrate(model, select(model, include=["inp"]), lambda: model(torch.full_like(x, float("nan"))))
    assert bad.fallback["inp"] == "non-finite inputs"
    assert "inp" not in bad.covs
    # a fallen-back layer is factored exactly as plain SVD factors it
    plain = factorize(copy.deepcopy(model), {"cell.hh": 16})
    white = factorize(copy.deepcopy(model), {"cell.hh": 16}, covs=calib.covs)
    assert torch.equal(plain.cell.matrices["weight_hh"].U, white.cell.matrices["weight_hh"].U)


def test_the_search_twin_scores_what_the_whitened_factorisation_makes():
    model, x = _toy(), _inputs()
    chosen = select(model, types=["GRU", "Linear"])
    calib = calibrate(model, chosen, lambda: model(x))
    policy = {l.name: 8 for l in chosen if min(l.shape) > 8}
    twin = Approximator(model, chosen, calib.covs).apply(policy)
    made = factorize(copy.deepcopy(model), policy, covs=calib.covs).eval()
    with torch.no_grad():
        assert torch.allclose(twin(x), made(x), atol=1e-4)
    # energies are of the outputs: whitened keeps more of them at a low rank than plain SVD keeps of ||W||
    plain = Approximator(model, chosen)
    white = Approximator(model, chosen, calib.covs)
    assert white.energy("inp", 4) > plain.energy("inp", 4)


def test_layer_wise_recovery_lowers_each_modules_output_error():
    model, x = _toy(), _inputs()
    cut = factorize(copy.deepcopy(model), {l.name: 8 for l in select(model, types=["GRU", "LSTM", "Linear"])
                                            if min(l.shape) > 8})
    report = recover(model, cut, lambda m: m(x), steps=60, lr=3e-3, progress=False)
    assert set(report) >= {"inp", "gru", "lstm"}
    for path, r in report.items():
        assert r["error_after"] < r["error_before"], (path, r)
    # the recovered model is closer to the original end to end
    with torch.no_grad():
        ref = model(x)
        before = factorize(copy.deepcopy(model), {l.name: l.rank for l in layers(cut) if l.rank})(x)
        assert (cut(x) - ref).pow(2).mean() < (before - ref).pow(2).mean()


def test_recovery_leaves_a_module_that_the_two_runs_call_differently():
    lin = nn.Linear(12, 12)
    cut = factorize(copy.deepcopy(lin), {"": 4})
    calls = iter([2, 3])  # the original is called twice, the factored one three times

    def run(m):
        for _ in range(next(calls)):
            m(torch.randn(5, 12))

    report = recover(lin, cut, run, steps=5, progress=False)
    assert "called 3 times" in report[""]["skipped"]


def test_compress_runs_cut_recovery_and_fine_tuning_and_scores_each_stage(tmp_path):
    from toy import good

    from pipeline.atomic import read_json
    from pipeline.compress import CompressConfig, compress
    from pipeline.task import load_factored

    task = good()
    cfg = CompressConfig(target_compression=2, iterations=1, episodes=4, recover_steps=30, finetune_steps=5, threads=1)
    r = compress(task, tmp_path / "run", cfg, progress=False, log=lambda *_: None)
    row = r["history"][0]
    assert row["metric_after_recovery"] < row["metric_after_cut"]
    stages = {"after the cut": row["metric_after_cut"], "after recovery": row["metric_after_recovery"],
              "after fine-tuning": row["metric_after_finetune"]}
    assert row["metric"] == min(stages.values()) == stages[row["kept"]]  # the best stage is kept
    assert read_json(tmp_path / "run" / "iter-1" / "search" / "best.json")["factorisation"]["method"] == "whitened"
    recovery = read_json(tmp_path / "run" / "iter-1" / "recovery.json")
    assert all(v["error_after"] < v["error_before"] for v in recovery.values())
    report = (tmp_path / "run" / "report.md").read_text()
    assert "after recovery" in report and f"{row['metric_after_cut']:.4f}" in report
    recovered = load_factored(tmp_path / "run" / "iter-1" / "recovered.safetensors", task.model)
    assert task.evaluate(recovered) == pytest.approx(row["metric_after_recovery"], rel=1e-5)
