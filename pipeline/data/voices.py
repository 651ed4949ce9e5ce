"""The offline TTS voices of the corpus and how to make each one speak.

A voice is an engine plus a voice name; `speaker` names the person behind it, so that
one recorded speaker used by two engines (flite and festival `kal`) counts once.
Reserved voices of shared/DATA.md (piper joe, every slt, MBROLA us2/us3, pico en-US)
are not in this table at all.
"""
import os
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from pipeline.errors import PipelineError

ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                   "klatt3", "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Michael", "Mike", "Storm", "Tweaky",
                   "adam", "anika", "aunty", "belinda", "benjamin", "caleb", "david", "edward", "grandma", "grandpa",
                   "john", "linda", "max", "norbert", "paul", "quincy", "rob", "robert", "shelby", "steph", "travis",
                   "victor", "zac"]
# Voices that `train` never hears: `test` is spoken by these alone.
HELD_OUT_SPEAKERS = ("flite:rms", "festival:don", "rhvoice:clb", "espeak:en-029")


@dataclass(frozen=True)
class Voice:
    engine: str
    name: str
    speaker: str

    @property
    def id(self):
        return f"{self.engine}:{self.name}"


def all_voices():
    voices = [Voice("espeak", f"{a}+{v}", f"espeak:{a}") for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    voices += [Voice("espeak", f"en-029+{v}", "espeak:en-029") for v in ("m3", "f2", "klatt", "Andy")]
    voices += [Voice("espeak", f"mb-{n}", f"mbrola:{n}") for n in ("us1", "en1")]
    voices += [Voice("flite", n, f"flite:{'kal' if n.startswith('kal') else n}") for n in ("kal", "kal16", "awb", "rms")]
    voices += [Voice("festival", f"{n}_diphone", f"festival:{n}") for n in ("kal", "ked", "rab", "don")]
    voices += [Voice("festival", f"{n}_mbrola", f"mbrola:{n}") for n in ("us1", "en1")]
    voices += [Voice("pico", "en-GB", "pico:en-GB")]
    voices += [Voice("rhvoice", n, f"rhvoice:{n}") for n in ("alan", "bdl", "clb", "evgeniy-eng", "lyubov")]
    return voices


def train_voices():
    return [v for v in all_voices() if v.speaker not in HELD_OUT_SPEAKERS]


def held_out_voices():
    return [v for v in all_voices() if v.speaker in HELD_OUT_SPEAKERS]


def _command(voice, text, out, speed, pitch):
    """argv and stdin text for one utterance; speed > 1 is faster, pitch in 0..1 (0.5 neutral)."""
    if voice.engine == "espeak":
        return ["espeak-ng", "-v", voice.name, "-s", str(round(170 * speed)), "-p", str(round(20 + 60 * pitch)),
                "-w", out, text], None
    if voice.engine == "flite":
        return ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / speed:.3f}", "-t", text, "-o", out], None
    if voice.engine == "festival":
        return ["text2wave", "-eval", f"(voice_{voice.name})",
                "-eval", f"(Parameter.set 'Duration_Stretch {1 / speed:.3f})", "-o", out], text
    if voice.engine == "pico":
        ssml = f'<speed level="{round(100 * speed)}"><pitch level="{round(80 + 40 * pitch)}">{text}</pitch></speed>'
        return ["pico2wave", "-l", voice.name, "-w", out, ssml], None
    if voice.engine == "rhvoice":
        return ["RHVoice-test", "-p", voice.name, "-r", str(round(100 * speed)), "-t", str(round(80 + 40 * pitch)),
                "-o", out], text
    raise ValueError(f"unknown TTS engine {voice.engine!r}")


def synthesize(voice, text, speed=1.0, pitch=0.5):
    """Speak `text`; returns (mono float32 samples, sample rate)."""
    with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
        out = os.path.join(tmp, "out.wav")
        argv, stdin = _command(voice, text, out, speed, pitch)
        try:
            res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise PipelineError(f"TTS engine '{argv[0]}' not found: run scripts/install-system-deps.sh") from None
        if res.returncode != 0 or not os.path.exists(out):
            raise PipelineError(f"{voice.id}: TTS failed (exit {res.returncode}): {res.stderr.strip()[:200]}")
        audio, sr = sf.read(out, dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio[:, 0]), sr
