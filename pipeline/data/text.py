"""Transcript normalisation and the English text sources of the embedded corpus.

Transcripts are lower-case a-z, apostrophe and single spaces; digits are spelled out.
Sources (Debian packages, see shared/DATA.md): Jane Austen's novels, the King James Bible,
fortunes, WordNet example sentences. Reserved texts (DATA.md) are left out at the source:
chapter 1 of Sense and Sensibility, and any fortune quoting The Devil's Dictionary or Moby Dick
(by name, or by content: `is_reserved`).
"""
import gzip
import re
import subprocess
import unicodedata
import zlib
from pathlib import Path

from num2words import num2words

from pipeline.errors import PipelineError

MIN_WORDS, MAX_WORDS = 4, 25
_SYMBOLS = {"&": " and ", "%": " percent ", "+": " plus ", "@": " at ", "*": " star ", "#": " pound ", "=": " equals "}
_ABBREV = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "vs": "versus", "etc": "etcetera"}
_NUMBER = re.compile(r"(\d+)(st|nd|rd|th)?\b")
# Reserved by DATA.md: never train, tune or select on these.
RESERVED_MARKERS = ("bierce", "devil's dictionary", "moby", "melville", "ahab", "ishmael", "harvard sentence")
# Reserved passages that reach the packages without a name to catch them by, as normalised text: a
# verse of The Devil's Dictionary ("Coma Berenices") sits unattributed in fortunes' songs-poems.
RESERVED_PASSAGES = ("her locks an ancient lady gave", "upon some stars bestowed her name",
                     "no stellar recognition's given", "there are not stars enough in heaven")


def is_reserved(text):
    """Whether a text quotes or names a reserved source (DATA.md), judged by its content."""
    low = text.lower()
    if any(m in low for m in RESERVED_MARKERS):
        return True
    n = normalize(text)
    return any(p in n for p in RESERVED_PASSAGES)


def _spell_number(m):
    n = int(m.group(1))
    if n > 10**9:
        return " " + " ".join(num2words(int(d)) for d in m.group(1)) + " "
    return " " + num2words(n, to="ordinal" if m.group(2) else "cardinal") + " "


def normalize(text):
    """Normalise a transcript; returns '' when nothing speakable is left."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = text.replace("\u2019", "'").replace("`", "'")
    for sym, word in _SYMBOLS.items():
        text = text.replace(sym, word)
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    text = _NUMBER.sub(_spell_number, text)
    text = text.lower().replace("-", " ")
    words = []
    for w in re.sub(r"[^a-z' ]+", " ", text).split():
        w = w.strip("'")
        if w:
            words.append(_ABBREV.get(w, w))
    return " ".join(words)


def split_sentences(text):
    """Split running text into sentences at . ! ? ; and normalise each; keep 4-25 words."""
    out = []
    for s in re.split(r"(?<=[.!?;])\s+|\n\s*\n", text):
        if is_reserved(s):
            continue
        n = normalize(s)
        if MIN_WORDS <= len(n.split()) <= MAX_WORDS:
            out.append(n)
    return out


# ---- sources ---------------------------------------------------------------------------

def _austen_novels(r_library):
    """{novel name: list of text lines} from the R package janeaustenr (read with `rdata`)."""
    import rdata

    data = Path(r_library) / "janeaustenr" / "data"
    try:
        raw_index = gzip.decompress((data / "Rdata.rdx").read_bytes())
        rdb = (data / "Rdata.rdb").read_bytes()
    except OSError as e:
        raise PipelineError(f"{data}: cannot read janeaustenr data ({e}); run scripts/install-system-deps.sh") from None
    index = rdata.conversion.convert(rdata.parser.parse_data(raw_index))
    novels = {}
    for name, (off, length) in index["variables"].items():
        blob = rdb[int(off):int(off) + int(length)]  # 4-byte length, then a zlib stream
        novels[str(name)] = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))]
    return novels


def _chapter1_span(lines):
    return lines.index("CHAPTER 1"), lines.index("CHAPTER 2")


def austen_sentences(r_library):
    """Jane Austen's six novels, less the reserved chapter 1 of Sense and Sensibility."""
    out = []
    for name, lines in _austen_novels(r_library).items():
        if name == "sensesensibility":
            i, j = _chapter1_span(lines)
            lines = lines[:i] + lines[j:]
        out += split_sentences("\n".join(lines))
    return out


def sense_chapter1_sentences(r_library):
    """The reserved chapter, for the test that proves it never enters a split."""
    lines = _austen_novels(r_library)["sensesensibility"]
    i, j = _chapter1_span(lines)
    return split_sentences("\n".join(lines[i + 1:j]))


def bible_sentences():
    """The King James Bible through the `bible` reader of bible-kjv."""
    try:
        res = subprocess.run(["bible", "-l10000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise PipelineError(f"bible-kjv: cannot read the bible text ({e}); run scripts/install-system-deps.sh") from None
    verses = [re.sub(r"^\s*\d+\s+", "", line) for line in res.stdout.splitlines() if re.match(r"^\s*\d+\s", line)]
    return split_sentences("\n\n".join(verses))


def fortune_sentences(fortune_dir="/usr/share/games/fortunes"):
    """Fortunes, without attributions; the `definitions` file is left out whole (Devil's Dictionary)."""
    out = []
    for f in sorted(Path(fortune_dir).glob("*")):
        if f.suffix in (".dat", ".u8") or not f.is_file() or f.name == "definitions":
            continue
        for fortune in f.read_text(encoding="latin-1").split("\n%\n"):
            if is_reserved(fortune):
                continue
            body = "\n".join(line for line in fortune.splitlines() if not line.strip().startswith("--"))
            out += split_sentences(body)
    return out


def wordnet_sentences(wordnet_dir="/usr/share/wordnet"):
    """Quoted example sentences from WordNet's data files."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = Path(wordnet_dir) / f"data.{pos}"
        for line in path.read_text(encoding="latin-1").splitlines():
            if "|" in line:
                for ex in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    out += split_sentences(ex)
    return out
