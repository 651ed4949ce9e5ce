"""Low-rank factorisation: exact at full rank, r(m+n) parameters, round trips, trainable, validated specs."""
import copy
import json

import pytest
import torch
from conftest import rewrite_header, run_cli
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.errors import PipelineError
from pipeline.lowrank import (
    LowRankLinear,
    LowRankLSTM,
    cost_table,
    current_ranks,
    factorize,
    layers,
    parse_rank_spec,
    uniform_ranks,
)
from pipeline.lowrank.checkpoint import load_checkpoint, save_checkpoint
from pipeline.model.decode import greedy


def full_ranks(model):
    return {l.name: min(l.shape) for l in layers(model)}


@pytest.mark.parametrize("hidden, inp", [(1, 3), (37, 20), (100, 64)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_full_rank_lstm_is_a_drop_in(hidden, inp, bidirectional):
    torch.manual_seed(hidden)
    holder = nn.Module()
    holder.lstm = nn.LSTM(inp, hidden, num_layers=2, bidirectional=bidirectional, batch_first=True)
    ref = holder.lstm
    lr = factorize(copy.deepcopy(holder), full_ranks(holder)).lstm
    assert isinstance(lr, LowRankLSTM)
    x, lens = torch.randn(3, 11, inp), torch.tensor([11, 5, 8])
    h0 = torch.randn(2 * (2 if bidirectional else 1), 3, hidden)
    with torch.no_grad():
        for out_ref, out_lr in [(ref(x), lr(x)), (ref(x, (h0, h0)), lr(x, (h0, h0)))]:
            for a, b in zip([out_ref[0], *out_ref[1]], [out_lr[0], *out_lr[1]]):
                assert (a - b).abs().max() < 1e-5
        p = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        (pa, (ha, ca)), (pb, (hb, cb)) = ref(p), lr(p)
        assert (pad_packed_sequence(pa, batch_first=True)[0] - pad_packed_sequence(pb, batch_first=True)[0]).abs().max() < 1e-5
        assert (ha - hb).abs().max() < 1e-5 and (ca - cb).abs().max() < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
def test_training_runs_the_fused_lstm_on_the_products_with_the_same_outputs_and_gradients(bidirectional):
    """Training mode runs PyTorch's fused LSTM on W = U V; eval mode steps through the factors.
    Both give the same outputs, and the same gradients reach U, V and the bias."""
    torch.manual_seed(1)
    holder = nn.Module()
    holder.lstm = nn.LSTM(24, 16, num_layers=2, bidirectional=bidirectional, batch_first=True)
    ranks = {l.name: r for l, r in zip(layers(holder), [8, None, 8, 8, None, 8, 8, 8])}
    lr = factorize(holder, {k: v for k, v in ranks.items() if k in {l.name for l in layers(holder)}}).lstm
    x, h0 = torch.randn(3, 9, 24), torch.randn(2 * (2 if bidirectional else 1), 3, 16)
    grads = []
    for train in (True, False):
        lr.train(train)
        lr.zero_grad()
        out, (h, c) = lr(x, (h0, h0))
        (out.square().sum() + h.sum() + c.sum()).backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in lr.named_parameters()}))
    (fused, gf), (stepped, gs) = grads
    assert (fused - stepped).abs().max() < 1e-5
    assert gf.keys() == gs.keys() and any(".U" in n for n in gf)
    for n in gf:
        assert (gf[n] - gs[n]).abs().max() < 1e-4, n


def test_full_rank_model_reproduces_outputs_and_transcripts(overfit):
    model, _, _, batch, _, hyps = overfit
    fact = factorize(copy.deepcopy(model), full_ranks(model)).eval()
    assert all(l.rank is not None for l in layers(fact))
    with torch.no_grad():
        a, _, _ = model.encode(batch[0], batch[1])
        b, _, _ = fact.encode(batch[0], batch[1])
        assert (a - b).abs().max() < 1e-5
        la = model.decoder(a, torch.ones(a.shape[:2], dtype=torch.bool), batch[2])
        lb = fact.decoder(b, torch.ones(b.shape[:2], dtype=torch.bool), batch[2])
        assert (la - lb).abs().max() < 1e-5
    assert greedy(fact, batch[0], batch[1]) == hyps


def test_parameter_counts_are_r_times_m_plus_n(overfit):
    model = copy.deepcopy(overfit[0])
    ranks = uniform_ranks(model, 0.25)
    factorize(model, ranks)
    for l in layers(model):
        if l.rank is not None:
            m, n = l.shape
            if l.kind == "linear":
                mod = model.get_submodule(l.name)
                assert mod.U.numel() + mod.V.numel() == l.rank * (m + n)
            assert l.rank % 8 == 0 and l.rank * (m + n) < m * n
    rows, totals = cost_table(model)
    assert sum(r["params"] for r in rows if r["kind"].startswith("lstm")) == totals["lstm_params"]
    assert totals["lstm_compression"] > 2.5


def test_uniform_policies_and_the_search_leave_the_output_layers_dense(overfit):
    from pipeline.search.space import searchable

    model = overfit[0]
    ranks = uniform_ranks(model, 0.25)
    assert "ctc" not in ranks and "decoder.out" not in ranks
    assert any(k.startswith("decoder.attention") for k in ranks)  # the other Linears are factorised
    walked = {l.name for l in searchable(model)}
    assert {"ctc", "decoder.out"}.isdisjoint(walked) and "decoder.attention.key" in walked
    factorize(copy.deepcopy(model), parse_rank_spec({"decoder.out": 8}, model))  # a spec may still name them


def test_refactorising_shrinks_ranks_from_the_factors(overfit):
    model = copy.deepcopy(overfit[0])
    factorize(model, uniform_ranks(model, 0.5))
    name = "encoder.lstms.0.fwd.l0.hh"
    before = model.get_submodule("encoder.lstms.0.fwd").cells["l0"].hh.dense().detach().clone()
    factorize(model, parse_rank_spec({name: 16}, model))
    cell = model.get_submodule("encoder.lstms.0.fwd").cells["l0"]
    assert cell.hh.rank == 16
    after = cell.hh.dense().detach()
    u, s, v = torch.linalg.svd(before.double())
    best = (u[:, :16] * s[:16]) @ v[:16]
    assert (after.double() - best).abs().max() < 1e-4
    with pytest.raises(PipelineError, match="rank 40 is above its limit 16"):
        parse_rank_spec({name: 40}, model, snap=False)


def test_factored_checkpoint_round_trip_is_exact(overfit, tmp_path):
    model, cmvn, _, batch, _, _ = overfit
    fact = factorize(copy.deepcopy(model), uniform_ranks(model, 0.5)).eval()
    path = tmp_path / "f.safetensors"
    save_checkpoint(path, fact, cmvn, provenance={"parent_sha256": "x"})
    loaded, _, header = load_checkpoint(path)
    assert header["ranks"] == current_ranks(fact) and header["ranks"]
    for (ka, va), (kb, vb) in zip(fact.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with torch.no_grad():
        assert torch.equal(fact.encode(batch[0], batch[1])[0], loaded.encode(batch[0], batch[1])[0])


def test_ranks_that_disagree_with_shapes_are_an_error(overfit, tmp_path):
    model, cmvn, _, _, _, _ = overfit
    fact = factorize(copy.deepcopy(model), uniform_ranks(model, 0.5))
    path = tmp_path / "f.safetensors"
    save_checkpoint(path, fact, cmvn)
    rewrite_header(path, lambda h: h["ranks"].update({"decoder.lstm.l0.hh": h["ranks"]["decoder.lstm.l0.hh"] - 8}))
    with pytest.raises(PipelineError, match="f.safetensors: tensors do not fit the model config and ranks"):
        load_checkpoint(path)


def test_gradients_flow_through_factors(overfit):
    model, _, _, batch, _, _ = overfit
    fact = factorize(copy.deepcopy(model), uniform_ranks(model, 0.25)).train()
    opt = torch.optim.Adam(fact.parameters(), lr=1e-3)
    linear = next(m for m in fact.modules() if isinstance(m, LowRankLinear))
    losses = []
    for _ in range(8):
        loss, _ = fact.loss(*batch, label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        assert linear.U.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("spec, message", [
    ({"encoder.lstms.9.fwd.l0.ih": 8}, "unknown layer 'encoder.lstms.9.fwd.l0.ih'"),
    ({"decoder.out": 0}, "rank 0 must be at least 1"),
    ({"decoder.out": 999}, "rank 999 is above its limit"),
    ({"decoder.out": 1.5}, "fraction 1.5 is outside"),
    ({"decoder.out": "half"}, "rank must be an integer, a fraction or \"dense\""),
    ([8, 16], "expected a JSON object"),
])
def test_bad_rank_specs_are_clear_errors(overfit, spec, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rank_spec(spec, overfit[0])


def test_snapping_and_unprofitable_layers(overfit):
    model = overfit[0]
    ranks = parse_rank_spec({"encoder.lstms.0.fwd.l0.hh": 13, "decoder.attention.energy": 1}, model)
    assert ranks == {"encoder.lstms.0.fwd.l0.hh": 16, "decoder.attention.energy": None}
    assert parse_rank_spec({"encoder.lstms.0.fwd.l0.hh": 13}, model, snap=False) == {"encoder.lstms.0.fwd.l0.hh": 13}


@pytest.mark.slow
def test_cli_factorize_and_inspect(overfit, tiny_corpus, tmp_path):
    model, cmvn, _, _, _, _ = overfit
    ckpt = tmp_path / "dense.safetensors"
    save_checkpoint(ckpt, model, cmvn)
    spec = tmp_path / "ranks.json"
    spec.write_text(json.dumps({"encoder.lstms.0.fwd.l0.ih": 16, "decoder.out": "dense"}))
    out = tmp_path / "f.safetensors"
    no_corpus = tmp_path / "nowhere"
    res = run_cli("factorize", "--model", str(ckpt), "--ranks", str(spec), "--data", str(no_corpus), "--out", str(out))
    assert res.returncode == 2 and f"{no_corpus / 'train.jsonl'}: the whitened factorisation" in res.stderr
    assert not out.exists()
    res = run_cli("factorize", "--model", str(ckpt), "--ranks", str(spec), "--data", str(tiny_corpus[0]),
                  "--calibration", "4", "--out", str(out))
    assert res.returncode == 0, res.stderr
    res = run_cli("inspect", str(out), "--json")
    info = json.loads(res.stdout)
    by = {r["name"]: r for r in info["layers"]}
    assert by["encoder.lstms.0.fwd.l0.ih"]["rank"] == 16 and 0 < by["encoder.lstms.0.fwd.l0.ih"]["energy"] < 1
    assert by["decoder.out"]["rank"] is None
    assert len(info["provenance"]["parent_sha256"]) == 64
    assert info["provenance"]["factorisation"]["method"] == "whitened"
    spec.write_text("{not json")
    res = run_cli("factorize", "--model", str(ckpt), "--ranks", str(spec), "--method", "svd",
                  "--out", str(tmp_path / "g.safetensors"))
    assert res.returncode == 2 and "ranks.json: malformed JSON at line 1" in res.stderr
    assert not (tmp_path / "g.safetensors").exists()
