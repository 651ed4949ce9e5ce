"""The character LM and beam search with shallow fusion: the search itself (pipeline/model/beam.py),
the LM in C++ against PyTorch, and the same hypotheses from PyTorch, onnxruntime and the native
runtime for the same settings; the LM's training text, file and command line."""
import copy
import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import run_cli

from export import native
from export.onnx_export import export
from export.runner import ExportError, OnnxAsr
from pipeline import _native
from pipeline.data.audio import load_audio
from pipeline.data.features import fbank
from pipeline.data.vocab import EOS, SOS, TOKENS, encode
from pipeline.data.vocab import decode as ids_to_text
from pipeline.lm_task import load_lm, save_lm
from pipeline.lowrank import factorize
from pipeline.lowrank.checkpoint import save_checkpoint
from pipeline.model.beam import BeamConfig, beam_search
from pipeline.model.decode import DecodeConfig, beam_from_encoder, decode
from pipeline.model.lm import CharLM, LmConfig, bits_per_char, manifest_texts, train_lm

ISAS = _native.available_isas()
LM_RANKS = {"lstm.l0.ih": 8, "lstm.l0.hh": 8, "lstm.l1.ih": 8, "lstm.l1.hh": 8}


class TableSteps:
    """A step object whose log-probabilities depend on the last token only (a bigram table): a known
    input for the search, not a stand-in for a model."""

    def __init__(self, table):
        self.table = np.log(np.asarray(table, np.float64) + 1e-12).astype(np.float32)

    def step(self, tokens):
        return self.table[tokens]

    def select(self, rows):
        pass


def bigram(vocab, pairs):
    """A row-stochastic table: pairs {prev: {next: p}}, the rest of each row spread evenly."""
    t = np.zeros((vocab, vocab))
    for prev in range(vocab):
        want = pairs.get(prev, {})
        rest = (1 - sum(want.values())) / (vocab - len(want))
        t[prev] = rest
        for nxt, p in want.items():
            t[prev, nxt] = p
    return t


def test_fusion_lets_the_lm_settle_what_the_recogniser_leaves_open():
    a, b = 3, 4
    asr = bigram(6, {SOS: {a: 0.45, b: 0.45}, a: {EOS: 0.9}, b: {EOS: 0.9}})
    lm = bigram(6, {SOS: {b: 0.9}, a: {EOS: 0.5}, b: {EOS: 0.5}})
    cfg = BeamConfig(beam=3)
    assert beam_search(TableSteps(asr), 10, cfg, SOS, EOS) == [a]  # a tie: the lower token first
    fused = BeamConfig(beam=3, lm_weight=0.5)
    assert beam_search(TableSteps(asr), 10, fused, SOS, EOS, TableSteps(lm)) == [b]


def test_length_bonus_and_cap_shape_the_hypothesis_length():
    a = 3
    asr = bigram(5, {SOS: {a: 0.9}, a: {EOS: 0.6, a: 0.35}})
    short = beam_search(TableSteps(asr), 10, BeamConfig(beam=2, length_penalty=0), SOS, EOS)
    long = beam_search(TableSteps(asr), 10, BeamConfig(beam=2, length_penalty=0, length_bonus=2.0), SOS, EOS)
    assert short == [a] and len(long) > 1 and set(long) == {a}
    # at most `cap` steps: the longest finished hypothesis has cap - 1 characters
    assert beam_search(TableSteps(asr), 3, BeamConfig(beam=2, length_penalty=0, length_bonus=5.0), SOS, EOS) == [a] * 2


@pytest.fixture(scope="module")
def lm(overfit):
    """A small LM trained on the overfit model's four transcripts (and a few more sentences)."""
    _, _, rows, *_ = overfit
    texts = [r["text"] for r in rows] * 4 + ["the cat sat on the mat", "a dog ran in the park"]
    torch.manual_seed(0)
    return train_lm(CharLM(LmConfig(embed=16, hidden=48, layers=2, dropout=0.0)), texts, 150, lr=1e-2), texts


def test_lm_learns_its_text_and_reads_back_from_its_file(lm, tmp_path):
    model, texts = lm
    untrained = CharLM(LmConfig(embed=16, hidden=48, layers=2, dropout=0.0))
    assert bits_per_char(model, texts) < 0.5 * bits_per_char(untrained, texts)
    small = factorize(copy.deepcopy(model), LM_RANKS)
    save_lm(tmp_path / "lm.safetensors", small, {"fusion": {"beam": 4}})
    back = load_lm(tmp_path / "lm.safetensors")
    assert abs(bits_per_char(back, texts) - bits_per_char(small, texts)) < 1e-6
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    with pytest.raises(Exception, match="bad.safetensors"):
        load_lm(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("factored", [False, True])
def test_native_lm_steps_like_torch(lm, isa, factored):
    model = factorize(copy.deepcopy(lm[0]), LM_RANKS) if factored else lm[0]
    nat = native.native_lm(model, isa=isa)
    assert nat.vocab == len(TOKENS) and nat.isa == isa
    ids = encode("the cat")
    state, tokens = None, [SOS, SOS]
    with torch.no_grad():
        for t in ids[:4]:
            want, state = model.step(torch.tensor(tokens), state)
            got = nat.step(tokens)
            assert np.abs(got - want.numpy()).max() <= 1e-4
            # keep row 1 twice, then feed the two rows different tokens
            nat.select([1, 1])
            state = tuple(s[:, [1, 1]] for s in state)
            tokens = [t, EOS]


def _rows_and_encoders(overfit):
    model, _, rows, batch, *_ = overfit
    feats, lengths = batch[0], batch[1]
    with torch.no_grad():
        enc, enc_lengths, _ = model.encode(feats, lengths)
    return [(rows[i], enc[i:i + 1, : enc_lengths[i]]) for i in range(len(rows))]


@pytest.mark.parametrize("factored", [False, True])
def test_beam_with_lm_same_in_torch_and_native(overfit, lm, factored):
    model = overfit[0]
    lm_model = lm[0]
    if factored:
        model = factorize(copy.deepcopy(model), {"decoder.lstm.l0.ih": 24, "decoder.attention.key": 8})
        lm_model = factorize(copy.deepcopy(lm_model), LM_RANKS)
    dec, nat_lm = native.decoder(model), native.native_lm(lm_model)
    for weight, bonus in ((0.0, 0.0), (0.6, 0.5), (2.0, 1.0)):
        cfg = DecodeConfig(beam=4, lm_weight=weight, length_bonus=bonus)
        for _, enc in _rows_and_encoders(overfit):
            want = beam_from_encoder(model, enc, cfg, lm_model)
            got = dec.beam(enc[0].numpy(), beam=4, lm_weight=weight, length_bonus=bonus, lm=nat_lm)
            assert ids_to_text(got) == want
    # a heavy LM does change what comes out: the search reads it
    heavy = DecodeConfig(beam=4, lm_weight=5.0)
    plain = DecodeConfig(beam=4)
    outs = [(beam_from_encoder(model, enc, heavy, lm_model), beam_from_encoder(model, enc, plain))
            for _, enc in _rows_and_encoders(overfit)]
    assert any(a != b for a, b in outs)


@pytest.mark.parametrize("factored_lm", [False, True])
def test_beam_with_lm_same_in_torch_onnxruntime_and_native_from_audio(overfit, lm, tmp_path, factored_lm):
    model, cmvn, rows, *_ = overfit
    lm_model = factorize(copy.deepcopy(lm[0]), LM_RANKS) if factored_lm else lm[0]
    save_checkpoint(tmp_path / "model.safetensors", model, cmvn)
    export(tmp_path / "model.safetensors", tmp_path / "onnx", lowering="lstm_op", log=lambda *_: None, lm=lm_model)
    onnx = OnnxAsr(tmp_path / "onnx")
    cfg = DecodeConfig(beam=4, lm_weight=0.6, length_bonus=0.5)
    nat = native.NativeAsr(model, cmvn, cfg, lm=lm_model)
    for r in rows:
        audio, sr = load_audio(r["audio_filepath"])
        f = cmvn(fbank(audio, sr))
        want = decode(model, f[None], torch.tensor([f.shape[0]]), cfg, lm_model)[0]
        assert nat.transcribe(audio, sr) == want
        assert onnx.transcribe(audio, sr, beam=4, lm_weight=0.6, length_bonus=0.5) == want
    export(tmp_path / "model.safetensors", tmp_path / "plain", lowering="lstm_op", log=lambda *_: None)
    with pytest.raises(ExportError, match="no language model"):
        OnnxAsr(tmp_path / "plain").transcribe(audio, sr, beam=4, lm_weight=0.5)


def test_model_file_with_its_lm_runs_standalone(overfit, lm, host_build, tmp_path):
    """lowrank_bench --model: the LM inside the model file, or beside it with --lm, decodes as PyTorch."""
    model, cmvn, rows, *_ = overfit
    lm_model = lm[0]
    native.write_model(tmp_path / "with_lm.lrkm", model, cmvn, lm=lm_model)
    native.write_model(tmp_path / "plain.lrkm", model, cmvn)
    native.write_lm(tmp_path / "lm.lrkm", lm_model)
    r = rows[0]
    audio, sr = load_audio(r["audio_filepath"])
    f = cmvn(fbank(audio, sr))
    want = decode(model, f[None], torch.tensor([f.shape[0]]), DecodeConfig(beam=4, lm_weight=0.6), lm_model)[0]
    raw = tmp_path / "audio.f32"
    raw.write_bytes(np.asarray(audio, "<f4").tobytes())
    bench = str(host_build / "lowrank_bench")
    for extra in (["--model", str(tmp_path / "with_lm.lrkm")],
                  ["--model", str(tmp_path / "plain.lrkm"), "--lm", str(tmp_path / "lm.lrkm")]):
        out = subprocess.run([bench, *extra, "--raw-audio", str(raw), "--reps", "1", "--warmup", "0", "--beam", "4",
                              "--lm-weight", "0.6"], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout)
        assert res["text"] == want and res["lm"] is True and res["beam"] == 4
    bad = subprocess.run([bench, "--model", str(tmp_path / "plain.lrkm"), "--raw-audio", str(raw), "--beam", "4",
                          "--lm-weight", "0.6"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no LM" in bad.stderr
    wrong = subprocess.run([bench, "--model", str(tmp_path / "plain.lrkm"), "--lm", str(tmp_path / "plain.lrkm"),
                            "--raw-audio", str(raw)], capture_output=True, text=True)
    assert wrong.returncode != 0 and "plain.lrkm" in wrong.stderr


def test_training_text_leaves_out_reserved_verses_by_content(tmp_path):
    rows = [{"text": "the cat sat on the mat"},
            {"text": "but to our modern married fair who'd give their lords to save their hair no stellar "
                     "recognition's given"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert manifest_texts(tmp_path / "m.jsonl") == (["the cat sat on the mat"], 1)


def test_lm_train_score_and_fused_eval_from_the_command_line(tiny_corpus, search_files, tmp_path):
    corpus, _ = tiny_corpus
    out = tmp_path / "lm.safetensors"
    res = run_cli("lm", "train", "--data", str(corpus), "--hidden", "32", "--steps", "30", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert out.exists() and "dev bits/char" in res.stdout
    res = run_cli("lm", "score", "--lm", str(out), str(corpus / "dev.jsonl"))
    assert res.returncode == 0 and "bits/char" in res.stdout
    res = run_cli("eval", "--model", str(search_files / "model.safetensors"), "--manifest",
                  str(search_files / "subset.jsonl"), "--lm", str(out), "--beam", "3", "--lm-weight", "0.3", "--json")
    assert res.returncode == 0, res.stderr
    assert 0 <= json.loads(res.stdout)["wer"] <= 1
    res = run_cli("eval", "--model", str(search_files / "model.safetensors"), "--manifest",
                  str(search_files / "subset.jsonl"), "--lm-weight", "0.3")
    assert res.returncode == 2 and "--lm-weight goes with --lm" in res.stderr
