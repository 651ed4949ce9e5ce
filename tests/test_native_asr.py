"""The native model (export.native.NativeAsr) against PyTorch: the front end (csrc/frontend.h:
Kaldi filterbanks, CMVN, the convolutional subsampling) and the greedy attention decoder
(csrc/decoder.h) on real utterances, dense and factored, on every SIMD path this CPU runs."""
import copy
import json
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import QEMU, SMALL

from export import native
from pipeline import _native
from pipeline.data.audio import load_audio, resample
from pipeline.data.features import fbank
from pipeline.data.vocab import SOS
from pipeline.data.vocab import decode as ids_to_text
from pipeline.lowrank import factorize
from pipeline.model.asr import ASRModel
from pipeline.model.decode import DecodeConfig, greedy, max_steps

ISAS = _native.available_isas()
# Every decoder projection factored (and the CTC head, which caps the output length).
DECODER_RANKS = {"decoder.lstm.l0.ih": 24, "decoder.lstm.l0.hh": 16, "decoder.attention.key": 8,
                 "decoder.attention.query": 8, "decoder.attention.loc": 3, "decoder.out": 12, "ctc": 12}


@pytest.mark.parametrize("isa", ISAS)
def test_native_features_match_kaldi_fbank(overfit, isa):
    """Normalised log-mel features: the float32 FFTs differ only where a mel band's power is near
    zero, which the log magnifies."""
    model, cmvn, rows, *_ = overfit
    fe = native.frontend(model, cmvn, isa=isa)
    for r in rows:
        audio, sr = load_audio(r["audio_filepath"])
        diff = np.abs(fe.features(audio) - cmvn(fbank(audio, sr)).numpy())
        assert diff.max() <= 1e-2 and diff.mean() <= 1e-5


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("subsampling", [2, 4])
def test_native_subsampling_matches_torch(overfit, isa, subsampling):
    _, cmvn, _, batch, _, _ = overfit
    torch.manual_seed(1)
    model = ASRModel(replace(SMALL, subsampling=subsampling)).eval()
    fe = native.frontend(model, cmvn, isa=isa)
    feats, lengths = batch[0], batch[1]
    for i in range(feats.shape[0]):
        f = feats[i, : lengths[i]]
        with torch.no_grad():
            want = model.encoder.subsample(f[None], lengths[i:i + 1])[0][0].numpy()
        got = fe.subsample(f.numpy())
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def test_native_asr_transcribes_real_audio_like_torch(overfit):
    """From samples to text, all in C++: the overfit model's exact transcripts, at 16 kHz and from 8 kHz audio."""
    model, cmvn, rows, _, _, hyps = overfit
    asr = native.NativeAsr(model, cmvn)
    for r, want in zip(rows, hyps):
        audio, sr = load_audio(r["audio_filepath"])
        assert asr.transcribe(audio, sr) == want
    audio, sr = load_audio(rows[0]["audio_filepath"])
    f = cmvn(fbank(audio[::2].copy(), sr // 2))
    assert asr.transcribe(audio[::2].copy(), sr // 2) == greedy(model, f[None], torch.tensor([f.shape[0]]))[0]
    res = asr.run(resample(audio, sr).astype(np.float32))  # lrk::Asr's result: tokens, text, each stage's time
    assert res["text"] == hyps[0] and ids_to_text(res["tokens"]) == hyps[0]
    assert set(res["ms"]) == {"features", "subsampling", "encoder_lstm", "decoder"} and min(res["ms"].values()) > 0
    assert res["frames"] == fbank(audio, sr).shape[0] and 0 < res["encoder_frames"] < res["frames"]


def torch_steps(model, enc, n):
    """PyTorch's step log-probabilities (n, V) of greedy decoding, one utterance."""
    dec, mask = model.decoder, torch.ones(1, enc.shape[1], dtype=torch.bool)
    keys, state, token, out = dec.attention.key(enc), dec.init_state(enc, mask), torch.tensor([SOS]), []
    with torch.no_grad():
        for _ in range(n):
            logp, state = dec.step(token, state, keys, enc, mask)
            out.append(logp[0])
            token = logp.argmax(-1)
    return torch.stack(out).numpy()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("factored", [False, True])
def test_native_decoder_matches_torch_greedy(overfit, isa, factored):
    model, _, rows, batch, _, _ = overfit
    if factored:
        model = factorize(copy.deepcopy(model), DECODER_RANKS)
    feats, lengths = batch[0], batch[1]
    dec = native.decoder(model, isa=isa)
    assert dec.isa == isa
    # factored: the context's two products are folded into the values attended over (csrc/decoder.h)
    dim = model.encoder.out_dim
    assert dec.values_per_frame == (DECODER_RANKS["decoder.lstm.l0.ih"] + model.cfg.vocab_size if factored else dim)
    for i in range(len(rows)):
        f = feats[i, : lengths[i]]
        with torch.no_grad():
            want = greedy(model, f[None], lengths[i:i + 1])[0]
            enc = model.encode(f[None], lengths[i:i + 1])[0]
        tokens, logp = dec.greedy(enc[0].numpy(), return_logp=True)
        assert ids_to_text(tokens) == want
        assert len(tokens) + 1 >= logp.shape[0] >= len(tokens)
        assert np.abs(logp - torch_steps(model, enc, logp.shape[0])).max() <= 1e-4
        assert dec.max_steps(enc[0].numpy()) == int(max_steps(model, enc, lengths.new_tensor([enc.shape[1]]),
                                                              DecodeConfig())[0])


def test_native_decoder_caps_the_output_length(overfit):
    """An untrained decoder loops; it stops at the cap PyTorch's greedy decoding uses."""
    model = copy.deepcopy(overfit[0])
    torch.nn.init.zeros_(model.decoder.out.weight)
    with torch.no_grad():
        model.decoder.out.bias.copy_(torch.arange(model.cfg.vocab_size, dtype=torch.float32))  # never EOS
    enc = torch.randn(1, 30, model.encoder.out_dim)
    dec = native.decoder(model, DecodeConfig(ctc_len_ratio=0))
    assert len(dec.greedy(enc[0].numpy())) == dec.max_steps(enc[0].numpy()) == 45  # 30 frames x 1.5


def test_native_bad_inputs_give_clear_errors(overfit):
    model, cmvn = overfit[0], overfit[1]
    fe = native.frontend(model, cmvn)
    with pytest.raises(ValueError, match="shorter than one frame"):
        fe.features(np.zeros(399, np.float32))
    with pytest.raises(ValueError, match="too few"):
        fe.subsample(np.zeros((6, 80), np.float32))
    with pytest.raises(ValueError, match="80 bins"):
        fe.subsample(np.zeros((60, 40), np.float32))
    dec = native.decoder(model)
    with pytest.raises(ValueError, match="enc must be"):
        dec.greedy(np.zeros((5, model.encoder.out_dim + 1), np.float32))
    with pytest.raises(ValueError, match="enc must be"):
        dec.greedy(np.zeros((0, model.encoder.out_dim), np.float32))
    only_embedding = native.encode({"decoder.embedding": np.zeros((31, 8), np.float32)})
    with pytest.raises(ValueError, match="<bytes>: missing entry 'decoder.lstm.cells'"):
        _native.AttentionDecoder(only_embedding)
    broken = copy.deepcopy(model)
    broken.decoder.out = torch.nn.Linear(10, model.cfg.vocab_size)
    with pytest.raises(ValueError, match="decoder out: shape"):
        native.decoder(broken)


def _kernel_check(binary, prefix=()):
    res = subprocess.run([*prefix, str(binary)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    paths = json.loads(res.stdout)["paths"]
    kernels = {"sigmoid", "tanh", "attention_energies", "location_conv", "prepare_frames", "power_spectra",
               "quantize", "matvec_i8", "matmul_i8"}
    assert all(set(errors) == kernels for errors in paths.values())
    return paths


def _assert_within_tolerance(paths):
    """Float kernels to 1e-6 of double references; the int8 products to 1e-6 of the same quantised
    arithmetic in double; activations quantised to the nearest integer step (|q - x / s| <= 1/2)."""
    for errors in paths.values():
        assert 0 <= errors.pop("quantize") <= 0.5 + 1e-6, paths
        assert max(errors.values()) <= 1e-6, paths


def test_model_file_states_its_sample_rate(overfit):
    """A front end computed at another rate is refused; a file without the entry (written before it
    existed) still loads."""
    model, cmvn = overfit[0], overfit[1]
    entries = native.model_entries(model, cmvn)
    assert entries["frontend.sample_rate"].tolist() == [16000]
    entries["frontend.sample_rate"] = np.array([8000], np.int32)
    with pytest.raises(ValueError, match="<bytes>: entry 'frontend.sample_rate': 8000 Hz"):
        _native.Asr(native.encode(entries))
    del entries["frontend.sample_rate"]
    assert _native.Asr(native.encode(entries)).transcribe(np.zeros(16000, np.float32))["frames"] > 0


def test_activations_decoder_frontend_and_int8_kernels_of_every_path(host_build):
    paths = _kernel_check(host_build / "kernel_check")
    assert set(paths) == set(ISAS)
    _assert_within_tolerance(paths)


@pytest.mark.parametrize("cpu, isas", [("max", {"neon-dotprod", "neon", "scalar"}),
                                       ("cortex-a53", {"neon", "scalar"})])
def test_kernels_on_aarch64_with_and_without_dotprod_under_qemu(aarch64_build, cpu, isas):
    """The int8 products with sdot (armv8.2-a+dotprod) and without it (a Cortex-A53), and the rest."""
    paths = _kernel_check(aarch64_build / "kernel_check", prefix=[QEMU[0], "-cpu", cpu, *QEMU[1:]])
    assert set(paths) == isas
    _assert_within_tolerance(paths)


def test_model_file_runs_standalone(overfit, host_build, tmp_path):
    """The whole model in one file, run by lowrank_bench without Python: NativeAsr's transcripts, from
    a wav file and from raw float32 samples; bad files are clear errors naming the file."""
    import soundfile as sf

    model, cmvn, rows, *_ = overfit
    native.write_model(tmp_path / "m.lrkm", model, cmvn)
    asr = native.NativeAsr(model, cmvn)
    binary = str(host_build / "lowrank_bench")

    def run(*args):
        return subprocess.run([binary, "--model", *map(str, args), "--reps", "1"], capture_output=True, text=True,
                              timeout=120)

    for r in rows[:2]:
        audio, sr = load_audio(r["audio_filepath"])
        sf.write(tmp_path / "a.wav", audio, sr, subtype="PCM_16")
        audio.astype("<f4").tofile(tmp_path / "a.f32")
        for flag, path in (("--audio", tmp_path / "a.wav"), ("--raw-audio", tmp_path / "a.f32")):
            res = run(tmp_path / "m.lrkm", flag, path)
            assert res.returncode == 0, res.stderr
            report = json.loads(res.stdout)
            assert report["text"] == asr.transcribe(audio, sr) and report["total_ms"]["median"] > 0
    sf.write(tmp_path / "8k.wav", audio[::2], sr // 2, subtype="PCM_16")
    res = run(tmp_path / "m.lrkm", "--audio", tmp_path / "8k.wav")
    assert res.returncode == 2 and "8k.wav: field fmt" in res.stderr
    data = (tmp_path / "m.lrkm").read_bytes()
    (tmp_path / "cut.lrkm").write_bytes(data[: len(data) // 2])
    res = run(tmp_path / "cut.lrkm", "--raw-audio", tmp_path / "a.f32")
    assert res.returncode == 2 and "cut.lrkm: checksum mismatch" in res.stderr
    (tmp_path / "bad.lrkm").write_bytes(b"LRKX" + data[4:])
    res = run(tmp_path / "bad.lrkm", "--raw-audio", tmp_path / "a.f32")
    assert res.returncode == 2 and "bad.lrkm: not a model file" in res.stderr


@pytest.mark.slow
def test_transcribe_and_export_native_from_the_command_line(search_files, overfit, tmp_path):
    from conftest import run_cli

    rows = overfit[2][:2]
    ckpt, files = str(search_files / "model.safetensors"), [r["audio_filepath"] for r in rows]
    torch_run = run_cli("transcribe", "--model", ckpt, *files)
    native_run = run_cli("transcribe", "--native", "--model", ckpt, *files)
    assert torch_run.returncode == native_run.returncode == 0, native_run.stderr
    assert native_run.stdout == torch_run.stdout and len(native_run.stdout.splitlines()) == 2
    torch_beam = run_cli("transcribe", "--beam", "3", "--model", ckpt, *files)
    native_beam = run_cli("transcribe", "--native", "--beam", "3", "--model", ckpt, *files)
    assert native_beam.returncode == 0 and native_beam.stdout == torch_beam.stdout, native_beam.stderr
    bad = run_cli("transcribe", "--native", "--beam", "3", "--ctc-weight", "0.3", "--model", ckpt, *files)
    assert bad.returncode == 2 and "without CTC rescoring" in bad.stderr
    res = run_cli("export", "--native", "--model", ckpt, "--out", str(tmp_path / "ex"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ex" / "model.lrkm").stat().st_size > 0
