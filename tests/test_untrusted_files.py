"""Files a device loads are untrusted: every malformed model file or audio file gives a one-line error
naming the file and the entry, never a crash, a hang, undefined behaviour or a huge allocation.
Each case here reproduces a fault the native runtime once had (docs/reliability.md)."""
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

from export import native
from pipeline import _native
from pipeline.data.features import Cmvn
from pipeline.errors import PipelineError
from pipeline.finetune import cached_scores
from pipeline.latency.table import LatencyTable
from pipeline.model.asr import ASRModel
from pipeline.model.config import ModelConfig
from pipeline.train import _configs as train_configs
from pipeline.train import load_state_file

TINY = ModelConfig(enc_layers=1, enc_hidden=16, dec_hidden=16, att_dim=8, conv_channels=4, embed_dim=8,
                   att_conv_channels=2, att_conv_kernel=5, dropout=0.0)


@pytest.fixture(scope="module")
def entries():
    torch.manual_seed(0)
    model = ASRModel(TINY).eval()
    return native.model_entries(model, Cmvn(torch.zeros(80), torch.ones(80)))


def load(e):
    return _native.Asr(native.encode(e))


def changed(entries, **values):
    e = dict(entries)
    for name, v in values.items():
        e[name.replace("__", ".")] = v
    return e


def test_a_whole_model_loads_and_runs(entries):
    assert load(entries).transcribe(np.zeros(16000, np.float32))["frames"] > 0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(entries, value):
    w = entries["encoder.0.hh"].copy()
    w[3, 2] = value
    with pytest.raises(ValueError, match=f"<bytes>: entry 'encoder.0.hh': value {3 * w.shape[1] + 2} is not finite"):
        load(changed(entries, encoder__0__hh=w))


@pytest.mark.parametrize("cp", [-5, 0xD800, 0x110000, 0x07, 0x9B])
def test_vocabulary_code_points_must_be_printable_unicode(entries, cp):
    v = entries["vocab"].copy()
    v[4] = cp
    with pytest.raises(ValueError, match="entry 'vocab': token 4"):
        load(changed(entries, vocab=v))


@pytest.mark.parametrize("limits", [[np.nan, 1.5, 5, 8], [1.5, np.inf, 5, 8], [1e30, 1.5, 5, 8],
                                    [1.5, 1.5, 5, 2e9], [1.5, 1.5, -3, 8]])
def test_decode_limits_are_checked_before_they_become_integers(entries, limits):
    with pytest.raises(ValueError, match="entry 'decoder.limits'"):
        load(changed(entries, decoder__limits=np.array(limits, np.float32)))


def test_an_fft_of_one_point_is_refused(entries, tmp_path, host_build):
    """A one-point FFT passed the old checks (one bin, a mel matrix to match) and divided by zero:
    run in a child process, so that a regression shows as a signal, not as the test run dying."""
    ints = entries["frontend.ints"].copy()
    ints[0], ints[1], ints[2] = 1, 1, 1  # frame_length, frame_shift, fft_size
    e = changed(entries, frontend__ints=ints, frontend__window=np.ones(1, np.float32),
                frontend__mel=np.ones((80, 1), np.float32))
    native.write(tmp_path / "fft1.lrkm", e)
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000, subtype="PCM_16")
    res = _bench(host_build, "--model", tmp_path / "fft1.lrkm", "--audio", tmp_path / "a.wav", "--reps", "1")
    assert res.returncode == 2 and "fft1.lrkm: front end fft: the fft size must be a power of two from 16" in res.stderr, \
        (res.returncode, res.stderr)


def test_huge_dimensions_of_empty_arrays_are_refused(entries):
    e = changed(entries, encoder__0__bias=np.zeros((0, 1 << 31), np.float32))
    with pytest.raises(ValueError, match="entry 'encoder.0.bias': dimension"):
        load(e)
    e = changed(entries, decoder__embedding=np.zeros((1 << 30, 0), np.float32))
    with pytest.raises(ValueError, match="entry 'decoder.embedding': dimension"):
        load(e)


def test_location_convolution_must_match_its_channels(entries):
    conv = entries["decoder.loc_conv"]
    with pytest.raises(ValueError, match="decoder.loc_conv"):
        load(changed(entries, decoder__loc_conv=np.zeros((conv.shape[0] + 1, conv.shape[1]), np.float32)))


def test_an_entry_the_model_does_not_use_is_refused(entries):
    with pytest.raises(ValueError, match="entry 'decoder.extra': not part of a model"):
        load(changed(entries, decoder__extra=np.zeros(3, np.float32)))


def test_a_flipped_bit_is_caught_by_the_checksum(entries):
    raw = bytearray(native.encode(entries))
    raw[len(raw) // 2] ^= 0x10
    with pytest.raises(ValueError, match="checksum"):
        _native.Asr(bytes(raw))


def test_a_version_1_file_without_checksum_still_loads_with_a_warning(entries, tmp_path, host_build):
    v2 = native.encode(entries)
    v1 = v2[:4] + struct.pack("<I", 1) + v2[8:-4]  # version 1: no checksum trailer
    assert zlib.crc32(v2[:-4]) == struct.unpack("<I", v2[-4:])[0]
    with pytest.warns(UserWarning, match="<bytes>: format version 1 has no checksum"):
        old = _native.ModelFile(v1)
    assert old.version == 1 and not old.checksummed and _native.ModelFile(v2).checksummed
    with pytest.warns(UserWarning):
        assert _native.Asr(v1).transcribe(np.zeros(16000, np.float32))["frames"] > 0
    (tmp_path / "v1.lrkm").write_bytes(v1)
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    res = subprocess.run([host_build / "lowrank_bench", "--model", tmp_path / "v1.lrkm", "--audio", tmp_path / "a.wav",
                          "--reps", "1", "--warmup", "0"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "v1.lrkm: format version 1 has no checksum" in res.stderr, res.stderr


def test_non_finite_samples_are_refused(entries):
    x = np.zeros(16000, np.float32)
    x[100] = np.nan
    with pytest.raises(ValueError, match="sample 100 is not finite"):
        load(entries).transcribe(x)


def _bench(host_build, *args):
    return subprocess.run([host_build / "lowrank_bench", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_tiny_file_declaring_gigabytes_needs_no_memory(tmp_path, host_build):
    name = b"encoder.0.ih"
    blob = b"LRKM" + struct.pack("<III", 1, 1, len(name)) + name + b"f" + struct.pack("<III", 2, 1 << 16, 1 << 16)
    blob += b"\0" * (100 - len(blob))
    (tmp_path / "huge.lrkm").write_bytes(blob)
    # the peak resident memory of lowrank_bench alone, as its parent (a fresh interpreter) sees it
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stderr)")
    res = subprocess.run([sys.executable, "-c", probe, str(host_build / "lowrank_bench"), "--weights",
                          str(tmp_path / "huge.lrkm")], capture_output=True, text=True, timeout=120)
    code, peak_kb = map(int, res.stdout.split("\n")[0].split())
    assert code == 2 and "huge.lrkm: truncated" in res.stdout, res.stdout
    assert peak_kb / 1024 < 50, peak_kb


@pytest.fixture(scope="module")
def model_file(entries, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.lrkm"
    native.write(path, entries)
    return path


def _wav(fmt_size=16, data=b"\0\0" * 1600, fmt=None):
    fmt = fmt if fmt is not None else struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)[:fmt_size]
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_a_short_fmt_chunk_is_refused(model_file, tmp_path, host_build):
    """A 2-byte fmt chunk at the end of the file was read 14 bytes past the buffer (ASan: heap-buffer-overflow)."""
    (tmp_path / "short.wav").write_bytes(_wav(fmt_size=2))
    body = b"WAVE" + b"fmt " + struct.pack("<I", 2) + b"\x01\x00"
    (tmp_path / "end.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    for name in ("short.wav", "end.wav"):
        res = _bench(host_build, "--model", model_file, "--audio", tmp_path / name, "--reps", "1")
        assert res.returncode == 2 and f"{name}: field fmt: 2 bytes" in res.stderr, res.stderr


def test_audio_is_told_by_its_header_not_its_size(model_file, tmp_path, host_build):
    (tmp_path / "notes.txt").write_bytes(b"abcd" * 4000)
    res = _bench(host_build, "--model", model_file, "--audio", tmp_path / "notes.txt", "--reps", "1")
    assert res.returncode == 2 and "notes.txt: not a wav file" in res.stderr, res.stderr
    (tmp_path / "u.f32").write_bytes(np.zeros(16000, "<f4").tobytes())
    res = _bench(host_build, "--model", model_file, "--raw-audio", tmp_path / "u.f32", "--reps", "1", "--warmup", "0")
    assert res.returncode == 0, res.stderr
    nan = np.zeros(16000, "<f4")
    nan[7] = np.nan
    (tmp_path / "nan.f32").write_bytes(nan.tobytes())
    res = _bench(host_build, "--model", model_file, "--raw-audio", tmp_path / "nan.f32", "--reps", "1")
    assert res.returncode == 2 and "sample 7 is not finite" in res.stderr, res.stderr


def test_a_data_chunk_past_the_end_is_refused(model_file, tmp_path, host_build):
    wav = bytearray(_wav())
    wav[-3204:-3200] = struct.pack("<I", 1 << 30)  # the data chunk's size
    (tmp_path / "cut.wav").write_bytes(bytes(wav))
    res = _bench(host_build, "--model", model_file, "--audio", tmp_path / "cut.wav", "--reps", "1")
    assert res.returncode == 2 and "cut.wav: truncated" in res.stderr, res.stderr


# ---- files the Python stages read back: caches and run folders ----------------------------------

def test_a_damaged_latency_cache_is_named(tmp_path):
    table = LatencyTable(frames=10, reps=1, cache_dir=tmp_path)
    for text, field in (("{not json", "unreadable JSON"), ("[1, 2]", "expected a JSON dict"),
                        ('{"us_per_frame": {"16,8,0,0": [1.0, -2.0]}}', "us_per_frame.16,8,0,0"),
                        ('{"us_per_frame": {"16,8,0,0": "fast"}}', "us_per_frame.16,8,0,0")):
        table.path.write_text(text)
        with pytest.raises(PipelineError, match=f"{table.path.name}: .*{field}"):
            LatencyTable(frames=10, reps=1, cache_dir=tmp_path)


def test_a_damaged_run_folder_is_named(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"PK\x03\x04 not a torch file")
    (tmp_path / "config.json").write_text('{"model": ')
    with pytest.raises(PipelineError, match="config.json: unreadable JSON"):
        train_configs(tmp_path, None, resume=True)
    with pytest.raises(PipelineError, match="state.pt: unreadable state file"):
        load_state_file(tmp_path / "state.pt")
    (tmp_path / "dev.json").write_text("[]")
    with pytest.raises(PipelineError, match="dev.json: expected a JSON dict"):
        cached_scores(tmp_path / "dev.json", None, [], 1)


def test_non_finite_input_frames_are_refused(entries, tmp_path, host_build):
    native.write(tmp_path / "stack.lrkm", {k: v for k, v in entries.items() if k.startswith("encoder.")})
    inp = int(entries["encoder.0.ih"].shape[1])
    x = np.zeros((2, inp), "<f4")
    x[1, 3] = np.inf
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    res = _bench(host_build, "--weights", tmp_path / "stack.lrkm", "--input", tmp_path / "x.f32", "--frames", 2,
                 "--reps", 1)
    assert res.returncode == 2 and f"x.f32: sample {inp + 3} is not finite" in res.stderr, res.stderr
