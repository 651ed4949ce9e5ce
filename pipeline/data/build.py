"""`python -m pipeline data build`: the embedded speech corpus, from TTS voices and real recordings.

Output folder: `audio/<split>/<id>.flac` (16 kHz mono), one manifest per split
(`train.jsonl`, `dev.jsonl`, `test.jsonl`, `test_real.jsonl`), `summary.json`, `cmvn.json`
and `corpus.json` (preset, seed, format version). Every file is written atomically and a
rerun skips utterances already made, so a killed build resumes where it stopped.

Splits: sentences are disjoint between all splits. `test` is spoken only by voices that
`train` never hears (voices.HELD_OUT_SPEAKERS); `test_real` holds real recordings of
speakers absent from `train`; `dev` mixes train voices with two more unseen UQM speakers.
"""
import json
import multiprocessing as mp
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from pipeline.atomic import atomic_path, read_json, write_json, write_jsonl
from pipeline.data import audio as A
from pipeline.data import augment, real, text, voices
from pipeline.data.features import compute_cmvn
from pipeline.data.manifest import relative_rows
from pipeline.errors import PipelineError

FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test", "test_real")
UQM_DEV_RACES = ("supox", "kohrah")
UQM_TEST_RACES = ("arilou", "vux", "umgah", "chmmr")


@dataclass(frozen=True)
class Preset:
    train_tts: int        # synthetic training utterances
    dev_tts: int
    test_tts: int
    uqm_train: int        # real UQM training segments (-1: all)
    uqm_dev: int          # real segments of UQM_DEV_RACES in dev (-1: all)
    test_real: int        # real test utterances, UQM and asterisk (-1: all)


PRESETS = {
    "tiny": Preset(train_tts=60, dev_tts=10, test_tts=10, uqm_train=10, uqm_dev=4, test_real=10),
    "default": Preset(train_tts=7500, dev_tts=300, test_tts=400, uqm_train=-1, uqm_dev=-1, test_real=-1),
    "full": Preset(train_tts=30000, dev_tts=600, test_tts=800, uqm_train=-1, uqm_dev=-1, test_real=-1),
}


def default_cache():
    return Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "asr-pipeline"))


def debs_root():
    return default_cache() / "debs" / "root"


def _rng(seed, key):
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _take(items, n, rng):
    items = list(items)
    rng.shuffle(items)
    return items if n < 0 else items[:n]


# ---- planning: which utterance goes where ---------------------------------------------

def plan_jobs(preset, seed):
    """The full, deterministic list of utterances to make; each a plain dict."""
    root = debs_root()
    rng = np.random.default_rng(seed)
    segs = real.uqm_segments(root)
    by_split = {"train": [], "dev": [], "test_real": []}
    for race, rs in sorted(segs.items()):
        split = "test_real" if race in UQM_TEST_RACES else "dev" if race in UQM_DEV_RACES else "train"
        by_split[split] += rs
    asterisk = real.asterisk_prompts()
    reserved = real.uqm_reserved_texts(root)
    by_split = {k: [s for s in v if s.text not in reserved] for k, v in by_split.items()}
    asterisk = [(p, t) for p, t in asterisk if t not in reserved]
    # Sentences of the real held-out sets claim their text first; nothing else may say it.
    claimed = {"test_real": {s.text for s in by_split["test_real"]} | {t for _, t in asterisk}}
    claimed["dev"] = {s.text for s in by_split["dev"]} - claimed["test_real"]
    by_split["dev"] = [s for s in by_split["dev"] if s.text in claimed["dev"]]
    taken = claimed["test_real"] | claimed["dev"] | reserved
    by_split["train"] = [s for s in by_split["train"] if s.text not in taken]
    train_real_text = {s.text for s in by_split["train"]}

    pool = set(text.austen_sentences(root / "usr/lib/R/site-library")) | set(text.bible_sentences())
    pool |= set(text.fortune_sentences()) | set(text.wordnet_sentences())
    pool |= {s.text for rs in segs.values() for s in rs if len(s.text.split()) >= text.MIN_WORDS}
    pool = sorted(pool - taken)
    order = _take(pool, -1, rng)
    held = [s for s in order if s not in train_real_text]
    dev_text = held[:preset.dev_tts]
    test_text = held[preset.dev_tts:preset.dev_tts + preset.test_tts]
    used = set(dev_text) | set(test_text)
    train_text = [s for s in order if s not in used][:preset.train_tts]

    jobs = []
    jobs += _tts_jobs("train", train_text, voices.train_voices(), seed, augmented=True)
    jobs += _tts_jobs("dev", dev_text, voices.train_voices(), seed, augmented=False)
    jobs += _tts_jobs("test", test_text, voices.held_out_voices(), seed, augmented=False)
    jobs += [_uqm_job("train", s) for s in _take(by_split["train"], preset.uqm_train, rng)]
    jobs += [_uqm_job("dev", s) for s in _take(by_split["dev"], preset.uqm_dev, rng)]
    real_test = [_uqm_job("test_real", s) for s in by_split["test_real"]]
    real_test += [{"id": _asterisk_id(p), "split": "test_real", "kind": "asterisk", "path": p, "text": t,
                   "speaker": "asterisk:allison", "voice": "asterisk:allison"} for p, t in asterisk]
    jobs += _take(real_test, preset.test_real, rng)
    return jobs


def _asterisk_id(path):
    """Named by the prompt's path under the sounds folder: `digits/at` and `letters/at` are two recordings."""
    return "test_real-asterisk-" + str(Path(path).relative_to(real.ASTERISK_WAV).with_suffix("")).replace("/", "-")


def _tts_jobs(split, sentences, voice_list, seed, augmented):
    speakers = sorted({v.speaker for v in voice_list})
    jobs = []
    for i, sent in enumerate(sentences):
        jid = f"{split}-tts-{i:06d}"
        rng = _rng(seed, jid)
        # Pick the speaker first, so espeak's hundreds of variants do not crowd out other engines.
        speaker = speakers[rng.integers(len(speakers))]
        cands = [v for v in voice_list if v.speaker == speaker]
        v = cands[rng.integers(len(cands))]
        jobs.append({"id": jid, "split": split, "kind": "tts", "text": sent, "voice": v.id, "speaker": v.speaker,
                     "engine": v.engine, "voice_name": v.name,
                     "tts_speed": round(float(rng.uniform(0.85, 1.15)), 3),
                     "tts_pitch": round(float(rng.uniform(0.2, 0.8)), 3),
                     "augment": augment.random_plan(rng) if augmented else {}})
    return jobs


def _uqm_job(split, s):
    name = Path(s.ogg).stem
    return {"id": f"{split}-uqm-{name}-{s.start_ms}", "split": split, "kind": "uqm", "text": s.text,
            "speaker": f"uqm:{s.race}", "voice": f"uqm:{s.race}", "ogg": s.ogg, "start_ms": s.start_ms,
            "end_ms": s.end_ms}


# ---- making one utterance -------------------------------------------------------------

def _make_audio(job, seed):
    if job["kind"] == "tts":
        v = voices.Voice(job["engine"], job["voice_name"], job["speaker"])
        audio, sr = voices.synthesize(v, job["text"], job["tts_speed"], job["tts_pitch"])
        audio = A.trim_silence(A.resample(audio, sr), A.SAMPLE_RATE)
        return augment.apply_plan(audio, job["augment"], _rng(seed, job["id"] + "/aug"))
    if job["kind"] == "uqm":
        seg = real.Segment(job["speaker"][4:], job["ogg"], job["start_ms"], job["end_ms"], job["text"])
        audio, sr = real.read_uqm_segment(debs_root(), seg)
    else:
        audio, sr = A.load_audio(job["path"], allow_multichannel=True)
    return A.trim_silence(A.resample(audio, sr), A.SAMPLE_RATE)


def make_utterance(job, out_dir, seed):
    """Make (or find made) one utterance; returns its manifest row, or a row with 'rejected'."""
    # The file name carries a hash of the job, so a resumed build never reuses audio
    # made for a different text or voice under the same id.
    digest = f"{zlib.crc32(json.dumps(job, sort_keys=True).encode()):08x}"
    path = Path(out_dir) / "audio" / job["split"] / f"{job['id']}-{digest}.flac"
    rejected = path.with_suffix(".rejected")
    row = {k: job[k] for k in ("id", "text", "voice", "speaker", "split")}
    row["source"] = job["kind"]
    if job.get("augment"):
        row["augment"] = job["augment"]
    if rejected.exists():
        return {**row, "rejected": rejected.read_text().strip()}
    if not path.exists():
        try:
            audio = _make_audio(job, seed)
            reason = A.check_utterance(audio, A.SAMPLE_RATE, job["text"])
        except PipelineError as e:
            reason = str(e)
        path.parent.mkdir(parents=True, exist_ok=True)
        if reason:
            with atomic_path(rejected) as tmp:
                tmp.write_text(reason + "\n")
            return {**row, "rejected": reason}
        with atomic_path(path) as tmp:
            A.write_flac(str(tmp), audio)
    return {**row, "audio_filepath": str(path), "duration": round(sf.info(str(path)).duration, 3)}


def _worker_init():
    torch.set_num_threads(1)


def _run(args):
    return make_utterance(*args)


# ---- the whole build ------------------------------------------------------------------

def check_engines():
    need = {"espeak-ng", "flite", "text2wave", "pico2wave", "RHVoice-test", "bible"}
    missing = sorted(b for b in need if shutil.which(b) is None)
    if missing:
        raise PipelineError(f"missing programs: {', '.join(missing)}; run scripts/install-system-deps.sh")
    for p in (debs_root() / real.UQM_DIR / real.UQM_VOICE, debs_root() / "usr/lib/R/site-library/janeaustenr"):
        if not p.exists():
            raise PipelineError(f"{p}: not found; run scripts/install-system-deps.sh")


def build(preset_name, out_dir, seed=0, workers=None):
    if preset_name not in PRESETS:
        raise PipelineError(f"--preset: unknown preset {preset_name!r}; choose from {', '.join(PRESETS)}")
    out_dir = Path(out_dir)
    preset = PRESETS[preset_name]
    meta = {"format_version": FORMAT_VERSION, "preset": preset_name, "seed": seed, **asdict(preset)}
    meta_path = out_dir / "corpus.json"
    if meta_path.exists():
        old = read_json(meta_path)
        if {k: old.get(k) for k in meta} != meta:
            raise PipelineError(f"{meta_path}: folder holds a corpus built with preset {old.get('preset')!r} "
                                f"seed {old.get('seed')}; choose another --out")
    check_engines()
    write_json(meta_path, meta)
    for stale in out_dir.rglob(".*.tmp*"):  # half-written files of a killed build
        stale.unlink()
    jobs = plan_jobs(preset, seed)
    workers = workers or os.cpu_count() or 1
    rows = []
    with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        it = pool.imap_unordered(_run, [(j, out_dir, seed) for j in jobs], chunksize=4)
        for row in tqdm(it, total=len(jobs), desc=f"data build ({preset_name})", unit="utt"):
            rows.append(row)
    rows.sort(key=lambda r: r["id"])
    for split in SPLITS:
        kept = [r for r in rows if r["split"] == split and "rejected" not in r]
        if not kept:
            raise PipelineError(f"{out_dir}: split {split!r} is empty after validation")
        write_jsonl(out_dir / f"{split}.jsonl", relative_rows(kept, out_dir))
    summary = summarize(rows)
    write_json(out_dir / "summary.json", summary)
    compute_cmvn(out_dir / "train.jsonl", out_dir / "cmvn.json")
    return summary


def summarize(rows):
    out = {"splits": {}, "rejected": {}}
    for split in SPLITS:
        kept = [r for r in rows if r["split"] == split and "rejected" not in r]
        vocab = {w for r in kept for w in r["text"].split()}
        out["splits"][split] = {
            "utterances": len(kept), "hours": round(sum(r["duration"] for r in kept) / 3600, 3),
            "voices": len({r["voice"] for r in kept}), "speakers": len({r["speaker"] for r in kept}),
            "vocabulary": len(vocab), "real": sum(r["source"] != "tts" for r in kept)}
        out["rejected"][split] = sum(1 for r in rows if r["split"] == split and "rejected" in r)
    return out


def format_summary(summary):
    head = f"{'split':<10} {'utts':>7} {'hours':>7} {'real':>6} {'voices':>7} {'speakers':>8} {'vocab':>7} {'rejected':>8}"
    lines = [head, "-" * len(head)]
    for split, s in summary["splits"].items():
        lines.append(f"{split:<10} {s['utterances']:>7} {s['hours']:>7.2f} {s['real']:>6} {s['voices']:>7} "
                     f"{s['speakers']:>8} {s['vocabulary']:>7} {summary['rejected'][split]:>8}")
    return "\n".join(lines)
