"""The ASR model: it learns, round-trips through its checkpoint, and decodes deterministically."""
import copy
import json

import pytest
import torch
from conftest import SMALL, rewrite_header

from pipeline.data.vocab import EOS, TOKENS
from pipeline.errors import PipelineError
from pipeline.lowrank.checkpoint import load_checkpoint, save_checkpoint
from pipeline.model.asr import ASRModel
from pipeline.model.config import ModelConfig
from pipeline.model.decode import DecodeConfig, beam_search, ctc_best_paths, ctc_greedy, decode, greedy
from pipeline.model.evaluate import score


def test_loss_falls_and_transcripts_become_exact(overfit):
    model, _, rows, batch, losses, hyps = overfit
    assert losses[-1] < 0.3 * losses[0]
    assert hyps == [r["text"] for r in rows]
    # beam search ranks by length-normalised log-prob, so it may part from greedy by a character
    # (on one machine "bas" for "bags"), never by much on transcripts learnt by heart
    for cfg in (DecodeConfig(beam=5), DecodeConfig(beam=5, ctc_weight=0.3)):
        assert score(hyps, beam_search(model, batch[0], batch[1], cfg))["cer"] <= 0.05


def test_ctc_greedy_merges_repeats_drops_blanks_and_ignores_padding(overfit):
    model, _, rows, batch, _, _ = overfit
    hyps = decode(model, batch[0], batch[1], DecodeConfig(decoder="ctc"))
    assert hyps == ctc_greedy(model, batch[0], batch[1])
    single = [ctc_greedy(model, batch[0][i:i + 1, : batch[1][i]], batch[1][i:i + 1])[0] for i in range(len(rows))]
    assert single == hyps
    # the best path, collapsed by hand from the CTC head's argmax
    with torch.no_grad():
        enc, lengths, _ = model.encode(batch[0][:1], batch[1][:1])
        best = model.ctc_log_probs(enc)[0, : lengths[0]].argmax(-1).tolist()
    merged = [t for k, t in enumerate(best) if k == 0 or t != best[k - 1]]
    assert hyps[0] == "".join(TOKENS[t] for t in merged if t > 2)
    assert len(best) > len(hyps[0])  # blanks and repeats were there to drop
    with pytest.raises(ValueError, match="decoder 'rnnt'"):
        decode(model, batch[0], batch[1], DecodeConfig(decoder="rnnt"))


def test_output_length_is_capped_by_the_ctc_best_path(overfit):
    """A decoder whose EOS never wins (as a looping one) stops at ratio x the CTC path + margin."""
    model, _, _, batch, _, _ = overfit
    looping = copy.deepcopy(model)
    with torch.no_grad():
        looping.decoder.out.bias[EOS] = -1e4
    with torch.no_grad():
        enc, lengths, _ = model.encode(batch[0], batch[1])
    paths = [len(p) for p in ctc_best_paths(model, enc, lengths)]
    for cfg in (DecodeConfig(), DecodeConfig(ctc_len_ratio=1.2, ctc_len_margin=2)):
        hyps = greedy(looping, batch[0], batch[1], cfg)
        assert [len(h) for h in hyps] == [min(max(8, int(n * 1.5)), int(p * cfg.ctc_len_ratio) + cfg.ctc_len_margin)
                                          for n, p in zip(lengths.tolist(), paths)]
    frames_only = greedy(looping, batch[0], batch[1], DecodeConfig(ctc_len_ratio=0))
    assert [len(h) for h in frames_only] == [max(8, int(n * 1.5)) for n in lengths.tolist()]
    one = beam_search(looping, batch[0][:1, : batch[1][0]], batch[1][:1], DecodeConfig(beam=3))[0]
    assert len(one) == int(paths[0] * 1.5) + 5


def test_decoding_is_deterministic(overfit):
    model, _, _, batch, _, _ = overfit
    assert greedy(model, batch[0], batch[1]) == greedy(model, batch[0], batch[1])
    single = [greedy(model, batch[0][i:i + 1, : batch[1][i]], batch[1][i:i + 1])[0] for i in range(len(batch[1]))]
    assert single == greedy(model, batch[0], batch[1])  # padding does not change the result


def test_checkpoint_round_trip_is_exact(overfit, tmp_path):
    model, cmvn, _, batch, _, _ = overfit
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, cmvn, provenance={"run": "test"}, metrics={"dev_wer": 0.5})
    loaded, cmvn2, header = load_checkpoint(path)
    assert header["metrics"]["dev_wer"] == 0.5 and header["model_config"] == SMALL.to_dict()
    assert torch.equal(cmvn2.mean, cmvn.mean)
    with torch.no_grad():
        a, _, _ = model.encode(batch[0], batch[1])
        b, _, _ = loaded.encode(batch[0], batch[1])
    assert torch.equal(a, b)
    assert greedy(loaded, batch[0], batch[1]) == greedy(model, batch[0], batch[1])


def test_bad_checkpoints_give_clear_errors(overfit, tmp_path):
    model, cmvn, _, _, _, _ = overfit
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model, cmvn)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="truncated.safetensors: .*truncated"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    with pytest.raises(PipelineError, match="foreign.safetensors: not a checkpoint of this pipeline"):
        load_checkpoint(foreign)

    not_st = tmp_path / "junk.safetensors"
    not_st.write_bytes(b"\x00" * 5)
    with pytest.raises(PipelineError, match="junk.safetensors"):
        load_checkpoint(not_st)

    other_shape = tmp_path / "other.safetensors"
    save_checkpoint(other_shape, ASRModel(ModelConfig(**{**SMALL.to_dict(), "enc_hidden": 32})), cmvn)
    rewrite_header(other_shape, lambda h: h["model_config"].update(enc_hidden=96))  # disagrees with the tensors
    with pytest.raises(PipelineError, match="other.safetensors: tensors do not fit the model config"):
        load_checkpoint(other_shape)


@pytest.mark.slow
def test_cli_eval_and_transcribe(overfit, tmp_path):
    from conftest import run_cli

    model, cmvn, rows, _, _, _ = overfit
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, model, cmvn)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("eval", "--model", str(ckpt), "--manifest", str(manifest), "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert m["wer"] == 0.0 and m["cer"] == 0.0 and m["utterances"] == 4
    res = run_cli("eval", "--model", str(ckpt), "--manifest", str(manifest), "--beam", "5", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["cer"] <= 0.05  # see the first test
    res = run_cli("transcribe", "--model", str(ckpt), rows[0]["audio_filepath"], rows[1]["audio_filepath"])
    assert res.returncode == 0, res.stderr
    assert [l.split("\t")[1] for l in res.stdout.splitlines()] == [rows[0]["text"], rows[1]["text"]]
    res = run_cli("eval", "--model", str(tmp_path / "none.safetensors"), "--manifest", str(manifest))
    assert res.returncode == 2 and "none.safetensors: checkpoint not found" in res.stderr


@pytest.mark.parametrize("factor", [2, 4])
def test_subsampling_lengths_match_outputs(factor):
    from pipeline.model.asr import ConvSubsampling

    conv = ConvSubsampling(80, 4, factor)
    for n in (7, 8, 9, 10, 33, 100):
        y, lengths = conv(torch.zeros(1, n, 80), torch.tensor([n]))
        assert y.shape[1] == int(lengths[0]) and abs(n / factor - y.shape[1]) <= 4
    with pytest.raises(ValueError, match="2 or 4"):
        ConvSubsampling(80, 4, 3)


@pytest.mark.parametrize("dec_layers", [1, 2])
@pytest.mark.parametrize("factored", [False, True])
def test_teacher_forcing_equals_stepping_the_decoder(dec_layers, factored):
    """The written-out LSTM cell of training's teacher forcing computes what `step` does, for a dense
    (nn.LSTM) and a factored (LowRankLSTM) decoder."""
    from pipeline.lowrank import factorize, layers

    torch.manual_seed(0)
    model = ASRModel(ModelConfig(dec_layers=dec_layers, enc_hidden=64, dec_hidden=96, att_dim=32)).eval()
    if factored:
        factorize(model, {l.name: 16 for l in layers(model) if l.name.startswith("decoder.lstm")}).eval()
    enc, mask = torch.randn(3, 40, 128), torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    tokens = torch.randint(3, 31, (3, 17))
    with torch.no_grad():
        forced = model.decoder(enc, mask, tokens)
        keys, state, steps = model.decoder.attention.key(enc), model.decoder.init_state(enc, mask), []
        for u in range(tokens.shape[1]):
            logp, state = model.decoder.step(tokens[:, u], state, keys, enc, mask)
            steps.append(logp)
    assert float((forced - torch.stack(steps, 1)).abs().max()) < 1e-5
