"""A character LSTM language model over the recogniser's own vocabulary, for shallow fusion.

Each sentence is read from a zero state: <sos>, its characters, <eos>; the model predicts each next
token, so at decoding time it scores exactly what the attention decoder emits, <eos> included.
Bits per character count every predicted token of a sentence (its characters and its <eos>).
Training text is a manifest's transcripts, less any that quote a reserved source (DATA.md), judged
by content.
"""
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.data.text import is_reserved
from pipeline.data.vocab import EOS, SOS, TOKENS, encode
from pipeline.errors import PipelineError


@dataclass
class LmConfig:
    embed: int = 64
    hidden: int = 384
    layers: int = 2
    dropout: float = 0.2
    vocab_size: int = len(TOKENS)

    @classmethod
    def from_dict(cls, d, where="lm config"):
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise PipelineError(f"{where}: expected an object with fields {', '.join(sorted(known))}")
        return cls(**d)


class CharLM(nn.Module):
    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = cfg or LmConfig()
        c = self.cfg
        self.embed = nn.Embedding(c.vocab_size, c.embed)
        self.lstm = nn.LSTM(c.embed, c.hidden, c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0)
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden, c.vocab_size)

    def forward(self, ids):
        """ids (batch, time) -> next-token logits (batch, time, vocab), each row from a zero state."""
        return self.out(self.dropout(self.lstm(self.embed(ids))[0]))

    def step(self, tokens, state=None):
        """One token per row: tokens (k,) and the state (None: zero) -> log-probs (k, vocab), new state."""
        y, state = self.lstm(self.embed(tokens)[:, None], state)
        return torch.log_softmax(self.out(y[:, 0]), dim=-1), state


def manifest_texts(path):
    """(texts, dropped): a manifest's transcripts, less those that quote a reserved source."""
    texts, dropped = [], 0
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PipelineError(f"{path}:{i}: field 'text' unreadable ({e})") from None
        if is_reserved(text):
            dropped += 1
        else:
            texts.append(text)
    return texts, dropped


def sentence_batch(texts):
    """(inputs, targets, mask), each (B, U + 1): <sos> + ids as inputs, ids + <eos> as targets."""
    ids = [encode(t) for t in texts]
    n = max(len(s) for s in ids) + 1
    inputs = torch.full((len(ids), n), EOS, dtype=torch.long)
    targets = torch.full((len(ids), n), EOS, dtype=torch.long)
    for i, s in enumerate(ids):
        inputs[i, : len(s) + 1] = torch.tensor([SOS] + s)
        targets[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    mask = torch.arange(n)[None, :] <= torch.tensor([len(s) for s in ids])[:, None]
    return inputs, targets, mask


def _nats(model, texts):
    inputs, targets, mask = sentence_batch(texts)
    logits = model(inputs)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum(), mask.sum()


@torch.no_grad()
def bits_per_char(model, texts, batch=256):
    """Mean bits per predicted token (characters and <eos>) over whole sentences."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length pad little
    total, count = 0.0, 0
    for i in range(0, len(order), batch):
        nats, n = _nats(model, [texts[j] for j in order[i : i + batch]])
        total, count = total + float(nats), count + int(n)
    return total / max(1, count) / math.log(2)


def train_lm(model, texts, steps, lr=3e-3, batch=64, seed=0, progress=False):
    """Adam on random batches of sentences, the learning rate decaying to a tenth (cosine); in place."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=lr / 10)
    model.train()
    bar = tqdm(range(steps), desc="training the LM", unit="step", disable=not progress)
    for _ in bar:
        pick = torch.randint(0, len(texts), (batch,), generator=gen).tolist()
        nats, n = _nats(model, [texts[i] for i in pick])
        loss = nats / n
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(bpc=f"{float(loss.detach()) / math.log(2):.3f}")
    return model.eval()


def lm_meta(model):
    return {"kind": "char-lm", "lm_config": asdict(model.cfg), "vocab": TOKENS}
