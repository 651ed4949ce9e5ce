"""The tiny corpus built end to end with the real engines and recordings."""
import json
import time
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.data import build as B
from pipeline.data import real, text, voices
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError

RESERVED_VOICE_WORDS = ("joe", "slt", "us2", "us3", "en-us")  # pico en-US; espeak en-us accent is allowed below
SPLITS = ("train", "dev", "test", "test_real")


def load(corpus):
    return {s: read_manifest(corpus / f"{s}.jsonl") for s in SPLITS}


def test_every_split_nonempty_with_documented_keys(tiny_corpus):
    corpus, summary = tiny_corpus
    rows = load(corpus)
    for split in SPLITS:
        assert rows[split], split
        assert summary["splits"][split]["utterances"] == len(rows[split])
        for r in rows[split]:
            assert {"id", "audio_filepath", "duration", "text", "voice", "speaker", "source"} <= set(r)
            info = sf.info(r["audio_filepath"])
            assert info.samplerate == 16000 and info.channels == 1 and info.format == "FLAC"
            assert abs(info.duration - r["duration"]) < 0.01
            assert r["text"] == text.normalize(r["text"])
    assert sum(summary["splits"]["train"]["utterances"] for _ in [0]) >= 60
    assert (corpus / "cmvn.json").exists() and len(json.loads((corpus / "cmvn.json").read_text())["mean"]) == 80


def test_splits_are_disjoint_and_held_out(tiny_corpus):
    rows = load(tiny_corpus[0])
    texts = {s: {r["text"] for r in rows[s]} for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not texts[a] & texts[b], (a, b)
    train_speakers = {r["speaker"] for r in rows["train"]}
    test_speakers = {r["speaker"] for r in rows["test"]}
    assert len(test_speakers) >= 3 and not test_speakers & train_speakers
    assert test_speakers <= set(voices.HELD_OUT_SPEAKERS)
    assert not {r["speaker"] for r in rows["test_real"]} & train_speakers
    assert all(r["source"] != "tts" for r in rows["test_real"])
    assert {r["source"] for r in rows["train"]} == {"tts", "uqm"}


def test_no_reserved_voice_character_or_text(tiny_corpus):
    rows = [r for rs in load(tiny_corpus[0]).values() for r in rs]
    for r in rows:
        name = r["voice"].lower()
        assert not any(w in name for w in ("joe", "slt", "us2", "us3")), r["voice"]
        assert r["voice"] != "pico:en-US"
        assert r["speaker"] not in {f"uqm:{c}" for c in real.UQM_RESERVED}
    # The voice table itself holds none of them, so no preset can use them.
    for v in voices.all_voices():
        assert not any(w in v.name.lower() for w in ("joe", "slt", "us2", "us3")) and v.id != "pico:en-US"
    root = B.debs_root()
    chapter1 = set(text.sense_chapter1_sentences(root / "usr/lib/R/site-library"))
    reserved_lines = real.uqm_reserved_texts(root)
    assert len(chapter1) > 20 and len(reserved_lines) > 100
    spoken = {r["text"] for r in rows}
    assert not spoken & chapter1
    assert not spoken & reserved_lines


def test_rerun_resumes_without_redoing_work(tiny_corpus):
    corpus, summary = tiny_corpus
    before = {p: p.stat().st_mtime_ns for p in (corpus / "audio").rglob("*.flac")}
    manifests = {s: (corpus / f"{s}.jsonl").read_text() for s in SPLITS}
    victim = sorted(before)[0]
    victim.unlink()  # as if the build had been killed before this file
    t = time.time()
    again = B.build("tiny", corpus, seed=0)
    assert again == summary
    assert {s: (corpus / f"{s}.jsonl").read_text() for s in SPLITS} == manifests
    after = {p: p.stat().st_mtime_ns for p in (corpus / "audio").rglob("*.flac")}
    assert set(after) == set(before)
    assert all(after[p] == before[p] for p in before if p != victim)
    assert time.time() - t < 60


@pytest.mark.slow
def test_plan_and_audio_are_deterministic(tiny_corpus, tmp_path):
    plan_a = B.plan_jobs(B.PRESETS["tiny"], seed=0)
    assert plan_a == B.plan_jobs(B.PRESETS["tiny"], seed=0)
    assert plan_a != B.plan_jobs(B.PRESETS["tiny"], seed=1)
    corpus = tiny_corpus[0]
    for job in [j for j in plan_a if j["kind"] == "tts"][:3] + [j for j in plan_a if j["kind"] == "uqm"][:1]:
        row = B.make_utterance(job, tmp_path, 0)
        original = next((corpus / "audio" / job["split"]).glob(job["id"] + "-*.flac"))
        assert Path(row["audio_filepath"]).read_bytes() == original.read_bytes()


def test_every_utterance_id_of_the_default_plan_is_unique():
    ids = [j["id"] for j in B.plan_jobs(B.PRESETS["default"], seed=0)]
    assert len(ids) == len(set(ids))
    assert {"test_real-asterisk-digits-at", "test_real-asterisk-letters-at"} <= set(ids)


def test_other_preset_into_same_folder_is_refused(tiny_corpus):
    with pytest.raises(PipelineError, match="corpus.json: folder holds a corpus built with preset 'tiny' seed 0"):
        B.build("tiny", tiny_corpus[0], seed=5)
    with pytest.raises(PipelineError, match="unknown preset"):
        B.build("huge", tiny_corpus[0])


@pytest.mark.slow
def test_cli_build_prints_summary_table(tiny_corpus):
    from conftest import run_cli

    res = run_cli("data", "build", "--preset", "tiny", "--out", str(tiny_corpus[0]))
    assert res.returncode == 0, res.stderr
    for split in SPLITS:
        assert split in res.stdout
    assert "hours" in res.stdout and "vocab" in res.stdout
