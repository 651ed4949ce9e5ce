"""Character vocabulary: the normalised transcript alphabet plus blank/sos/eos."""

BLANK, SOS, EOS = 0, 1, 2
CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"
TOKENS = ["<blank>", "<sos>", "<eos>"] + list(CHARS)
_INDEX = {c: i for i, c in enumerate(TOKENS)}


def encode(text):
    """Token ids of a normalised transcript; characters outside the alphabet are an error."""
    try:
        return [_INDEX[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary; normalise the transcript") from None


def decode(ids):
    return "".join(TOKENS[i] for i in ids if i > EOS)
