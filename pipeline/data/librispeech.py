"""Read LibriSpeech's folder layout (ROOT/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + .flac)."""
from pathlib import Path

import soundfile as sf

from pipeline.data.text import normalize
from pipeline.errors import PipelineError


def librispeech_rows(root):
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: not a folder")
    trans = sorted(root.rglob("*.trans.txt"))
    if not trans:
        raise PipelineError(f"{root}: no *.trans.txt files: not a LibriSpeech folder")
    rows = []
    for t in trans:
        for lineno, line in enumerate(t.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, words = line.partition(" ")
            audio = t.parent / f"{uid}.flac"
            if not audio.is_file():
                raise PipelineError(f"{t}:{lineno}: audio file not found: {audio}")
            text = normalize(words)
            if not text:
                raise PipelineError(f"{t}:{lineno}: empty transcript")
            try:
                duration = sf.info(str(audio)).duration
            except (sf.LibsndfileError, RuntimeError) as e:
                raise PipelineError(f"{audio}: unreadable audio ({e})") from None
            rows.append({"id": uid, "audio_filepath": str(audio.resolve()), "duration": round(duration, 3),
                         "text": text, "speaker": f"librispeech:{uid.split('-')[0]}", "source": "librispeech"})
    return rows
