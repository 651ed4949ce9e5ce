
import pytest
import soundfile as sf
from conftest import run_cli

from pipeline.data.manifest import read_manifest


def make_librispeech(root, speech_wav):
    _, audio, sr = speech_wav
    chapter = root / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for i in range(2):
        sf.write(chapter / f"84-121123-000{i}.flac", audio, sr)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 HELLO WORLD THIS IS A TEST\n84-121123-0001 GO DO YOU HEAR 2 BELLS\n")
    return root


def test_import_librispeech_writes_a_loadable_manifest(tmp_path, speech_wav):
    root = make_librispeech(tmp_path / "LibriSpeech", speech_wav)
    out = tmp_path / "ls.jsonl"
    res = run_cli("data", "import-librispeech", str(root), "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = read_manifest(out)
    assert [r["id"] for r in rows] == ["84-121123-0000", "84-121123-0001"]
    assert rows[1]["text"] == "go do you hear two bells"
    assert rows[0]["duration"] == pytest.approx(len(speech_wav[1]) / speech_wav[2], abs=1e-3)


def test_import_librispeech_missing_audio_names_line(tmp_path, speech_wav):
    root = make_librispeech(tmp_path / "LibriSpeech", speech_wav)
    next(root.rglob("*-0001.flac")).unlink()
    res = run_cli("data", "import-librispeech", str(root), "--out", str(tmp_path / "x.jsonl"))
    assert res.returncode == 2
    assert "84-121123.trans.txt:2: audio file not found" in res.stderr
    assert not (tmp_path / "x.jsonl").exists()
    (tmp_path / "empty").mkdir()
    res = run_cli("data", "import-librispeech", str(tmp_path / "empty"), "--out", str(tmp_path / "x.jsonl"))
    assert res.returncode == 2 and "not a LibriSpeech folder" in res.stderr
