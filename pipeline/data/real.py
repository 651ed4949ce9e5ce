"""Real recorded speech: the UQM voice pack cut into lines, and the asterisk prompts.

UQM (Debian uqm-voice/uqm-content, unpacked by scripts/install-system-deps.sh): each dialogue
key `#(KEY) race-NNN.ogg` in `base/comm/<race>/<race>.txt` (or the voice pack's own copy of
that file) has one line of text per subtitle page, and the voice pack's `<race>.ts` gives
the page durations in ms for all pages but the last, which runs to the end of the clip.
"""
import gzip
import io
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.data.text import MAX_WORDS, normalize
from pipeline.errors import PipelineError

UQM_DIR = "usr/share/games/uqm/content"
UQM_VOICE = "addons/uqm-0.8.0-voice.uqm"
UQM_CONTENT = "packages/uqm-0.8.0-content.uqm"
# DATA.md reserves these characters, their recordings and their lines as text.
UQM_RESERVED = ("commander", "starbase", "syreen", "melnorme")
ASTERISK_TEXT = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
ASTERISK_WAV = "/usr/share/asterisk/sounds/en"


@dataclass(frozen=True)
class Segment:
    """One line of a UQM clip: where it lies in the clip and what is said."""
    race: str
    ogg: str        # member name in the voice pack
    start_ms: int
    end_ms: int     # -1: to the end of the clip
    text: str       # normalised


def _parse_dialogue(text):
    """{KEY: (ogg file name, [lines])} of the keys that have a recording."""
    out, key = {}, None
    for line in text.splitlines():
        m = re.match(r"#\((\w+)\)\s*(\S*)", line)
        if m:
            key = m.group(1) if m.group(2) else None
            if key:
                out[key] = (m.group(2), [])
        elif key and line.strip():
            out[key][1].append(line.strip())
    return out


def _parse_timestamps(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"#\((\w+)\)\s*(.*)", line)
        if m:
            out[m.group(1)] = [int(x) for x in m.group(2).split(",") if x.strip() and int(x) > 0]
    return out


def _open_packs(debs_root):
    root = Path(debs_root) / UQM_DIR
    try:
        return zipfile.ZipFile(root / UQM_VOICE), zipfile.ZipFile(root / UQM_CONTENT)
    except (OSError, zipfile.BadZipFile) as e:
        raise PipelineError(f"{root}: UQM voice pack unreadable ({e}); run scripts/install-system-deps.sh") from None


def _dialogue(voice, content, race):
    own = f"3dovoice/{race}/{race}.txt"
    raw = voice.read(own) if own in voice.namelist() else content.read(f"base/comm/{race}/{race}.txt")
    return _parse_dialogue(raw.decode("utf-8", "replace"))


def uqm_reserved_texts(debs_root):
    """Every normalised line of the reserved characters, recorded or not: never to be spoken."""
    voice, content = _open_packs(debs_root)
    out = set()
    for race in UQM_RESERVED:
        raw = content.read(f"base/comm/{race}/{race}.txt").decode("utf-8", "replace")
        out |= {normalize(line) for line in raw.splitlines() if line.strip() and not line.startswith("#")}
        out |= {normalize(line) for _, lines in _dialogue(voice, content, race).values() for line in lines}
    return out - {""}


def uqm_segments(debs_root):
    """All line segments of the non-reserved UQM characters, {race: [Segment]}."""
    voice, content = _open_packs(debs_root)
    names = set(voice.namelist())
    races = sorted({n.split("/")[1] for n in names if n.endswith(".ts")})
    out = {}
    for race in races:
        if race in UQM_RESERVED:
            continue
        stamps = _parse_timestamps(voice.read(f"3dovoice/{race}/{race}.ts").decode("utf-8", "replace"))
        segs = []
        for key, (ogg, lines) in _dialogue(voice, content, race).items():
            member = f"3dovoice/{race}/{ogg}"
            ts = stamps.get(key, [])
            if member not in names or len(ts) != len(lines) - 1:
                continue  # timings disagree with the text: the cut would be wrong
            t = 0
            for i, line in enumerate(lines):
                end = t + ts[i] if i < len(ts) else -1
                text = normalize(line)
                if text and len(text.split()) <= MAX_WORDS * 2:
                    segs.append(Segment(race, member, t, end, text))
                t = end
        out[race] = segs
    return out


@lru_cache(maxsize=2)
def _voice_zip(path):
    return zipfile.ZipFile(path)


def read_uqm_segment(debs_root, seg):
    """Decode one segment; returns (float32 samples, sample rate)."""
    data = _voice_zip(str(Path(debs_root) / UQM_DIR / UQM_VOICE)).read(seg.ogg)
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    a = seg.start_ms * sr // 1000
    b = len(audio) if seg.end_ms < 0 else seg.end_ms * sr // 1000
    return np.ascontiguousarray(audio[a:b]), sr


def asterisk_prompts():
    """[(wav path, normalised text)] of the asterisk core prompts that have a recording."""
    try:
        lines = gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace").read().splitlines()
    except OSError as e:
        raise PipelineError(f"{ASTERISK_TEXT}: unreadable ({e}); run scripts/install-system-deps.sh") from None
    out = []
    for line in lines:
        if line.startswith(";") or ": " not in line:
            continue
        key, text = line.split(": ", 1)
        wav = Path(ASTERISK_WAV) / f"{key.strip()}.wav"
        text = normalize(text)
        if wav.is_file() and text:
            out.append((str(wav), text))
    return out
