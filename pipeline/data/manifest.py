"""JSON-lines manifests (the NeMo convention): one utterance a line.

Required keys: `audio_filepath` (absolute, or relative to the manifest's folder),
`duration` (seconds, > 0) and `text` (normalised transcript, non-empty). Extra keys are
kept: this project writes `id`, `voice`, `speaker`, `source` and `augment`.
"""
import json
from pathlib import Path

from pipeline.data.audio import load_audio
from pipeline.errors import PipelineError

REQUIRED_KEYS = ("audio_filepath", "duration", "text")


def read_manifest(path, check_audio=True):
    """Load and validate a manifest; every error names the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: manifest not found")
    rows, seen_ids = [], {}
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise PipelineError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{where}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise PipelineError(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append(_check_row(row, where, path.parent, check_audio))
        uid = row.get("id")
        if uid is not None and not isinstance(uid, (str, int)):
            raise PipelineError(f"{where}: field 'id' must be a string or an integer")
        if uid is not None:
            if uid in seen_ids:
                raise PipelineError(f"{where}: field 'id': duplicate id {uid!r} (first on line {seen_ids[uid]})")
            seen_ids[uid] = lineno
    if not rows:
        raise PipelineError(f"{path}: manifest has no utterances")
    return rows


def _check_row(row, where, base, check_audio):
    for key in REQUIRED_KEYS:
        if key not in row:
            raise PipelineError(f"{where}: missing field '{key}'")
    text = row["text"]
    if not isinstance(text, str) or not text.strip():
        raise PipelineError(f"{where}: field 'text' is empty")
    if not text.isascii():
        raise PipelineError(f"{where}: field 'text' has non-ASCII characters; normalise transcripts to a-z, ' and space")
    dur = row["duration"]
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not 0 < dur < float("inf"):
        raise PipelineError(f"{where}: field 'duration' must be a positive number of seconds, got {dur!r}")
    audio = row["audio_filepath"]
    if not isinstance(audio, str) or not audio:
        raise PipelineError(f"{where}: field 'audio_filepath' must be a non-empty string")
    audio_path = Path(audio) if Path(audio).is_absolute() else base / audio
    if check_audio and not audio_path.is_file():
        raise PipelineError(f"{where}: field 'audio_filepath': file not found: {audio_path}")
    return {**row, "audio_filepath": str(audio_path)}


def relative_rows(rows, base):
    """Rows with audio paths relative to `base`, so a corpus folder can be moved whole."""
    base = Path(base).resolve()
    out = []
    for r in rows:
        p = Path(r["audio_filepath"]).resolve()
        out.append({**r, "audio_filepath": str(p.relative_to(base)) if p.is_relative_to(base) else str(p)})
    return out


def check_decodes(manifest, rows):
    """Decode every audio file of a manifest: it must be readable, mono and not empty (any rate is
    resampled to 16 kHz later). The error names the manifest line and the file."""
    for lineno, r in enumerate(rows, 1):
        try:
            load_audio(r["audio_filepath"])
        except PipelineError as e:
            raise PipelineError(f"{manifest}: utterance {lineno} ({r.get('id', '?')}): {e}") from None


def evenly_spaced(rows, n):
    """At most n rows spread evenly over the manifest (n = 0: all)."""
    return rows if n <= 0 or n >= len(rows) else [rows[round(i * len(rows) / n)] for i in range(n)]
