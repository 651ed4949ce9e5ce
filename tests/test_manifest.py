"""Manifest errors name the file, the line and the field; the CLI exits non-zero with one line."""
import json

import numpy as np
import pytest
from conftest import run_cli, write_wav

from pipeline.data.manifest import read_manifest, relative_rows
from pipeline.errors import PipelineError


@pytest.fixture
def good_row(tmp_path):
    wav = write_wav(tmp_path / "a.wav", 0.1 * np.sin(np.arange(16000) / 5.0))
    return {"id": "a", "audio_filepath": str(wav), "duration": 1.0, "text": "hello world"}


def write(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return p


def test_good_manifest_loads_with_documented_keys(tmp_path, good_row):
    rows = read_manifest(write(tmp_path, [good_row]))
    assert rows[0]["text"] == "hello world" and rows[0]["duration"] == 1.0
    assert set(rows[0]) >= {"audio_filepath", "duration", "text"}


def test_relative_paths_resolve_against_manifest_folder(tmp_path, good_row):
    rel = relative_rows([good_row], tmp_path)
    assert rel[0]["audio_filepath"] == "a.wav"
    assert read_manifest(write(tmp_path, rel))[0]["audio_filepath"] == str(tmp_path / "a.wav")


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: {**r, "audio_filepath": "/nonexistent/x.wav"}, "m.jsonl:2: field 'audio_filepath': file not found"),
    (lambda r: {**r, "text": "  "}, "m.jsonl:2: field 'text' is empty"),
    (lambda r: {k: v for k, v in r.items() if k != "duration"}, "m.jsonl:2: missing field 'duration'"),
    (lambda r: {**r, "duration": -1}, "m.jsonl:2: field 'duration' must be a positive number"),
    (lambda r: {**r, "text": "caf\u00e9"}, "m.jsonl:2: field 'text' has non-ASCII"),
    (lambda r: {**r, "id": "a"}, "m.jsonl:2: field 'id': duplicate id 'a' (first on line 1)"),
    (lambda r: '{"audio_filepath": "x.wav", "duration": 1', "m.jsonl:2: malformed JSON"),
    (lambda r: "[1, 2]", "m.jsonl:2: expected a JSON object"),
])
def test_bad_line_names_file_line_and_field(tmp_path, good_row, mutate, expected):
    path = write(tmp_path, [good_row, mutate(good_row)])
    with pytest.raises(PipelineError) as e:
        read_manifest(path)
    assert expected in str(e.value)


def test_empty_and_missing_manifest(tmp_path):
    with pytest.raises(PipelineError, match="no utterances"):
        read_manifest(write(tmp_path, []))
    with pytest.raises(PipelineError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_cli_check_reports_one_line_and_exits_nonzero(tmp_path, good_row):
    path = write(tmp_path, [good_row, {**good_row, "id": "b", "text": ""}])
    res = run_cli("data", "check", str(path))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert f"{path}:2: field 'text' is empty" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_check_unreadable_audio_names_file(tmp_path, good_row):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"this is not audio at all" * 10)
    from pipeline.data.audio import load_audio
    with pytest.raises(PipelineError, match="bad.flac: unreadable audio"):
        load_audio(bad)
    res = run_cli("data", "check", str(write(tmp_path, [good_row])))
    assert res.returncode == 0 and "1 utterances" in res.stdout


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_bytes(b"RIFF....WAVEjunk"), "unreadable audio"),
    (lambda p: write_wav(p, np.zeros((0,))), "audio has zero length"),
    (lambda p: write_wav(p, np.zeros((1600, 2))), "audio has 2 channels; expected mono"),
])
def test_decode_check_names_line_and_file(tmp_path, good_row, make, expected):
    bad = tmp_path / "bad.wav"
    make(bad)
    path = write(tmp_path, [good_row, {**good_row, "id": "b", "audio_filepath": str(bad)}])
    res = run_cli("data", "check", "--decode", str(path))
    assert res.returncode == 2
    assert f"m.jsonl: utterance 2 (b): {bad}: {expected}" in res.stderr
    assert run_cli("data", "check", str(path)).returncode == 0  # without --decode only paths are checked


def test_any_sample_rate_is_accepted(tmp_path, good_row):
    wav = write_wav(tmp_path / "r.wav", 0.1 * np.sin(np.arange(44100) / 5.0), sr=44100)
    path = write(tmp_path, [{**good_row, "audio_filepath": str(wav)}])
    assert run_cli("data", "check", "--decode", str(path)).returncode == 0
