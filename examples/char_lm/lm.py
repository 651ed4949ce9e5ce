"""An LSTM character language model of the corpus's transcripts: the model, its text and its metric.

The text is the manifest's transcripts joined by line breaks; the model sees windows of it and
predicts each next character. Bits per character are measured over consecutive chunks, each from a
zero state (the same for every model compared, so the figures compare).
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHARS = "\n '" + "abcdefghijklmnopqrstuvwxyz"


class CharLM(nn.Module):
    def __init__(self, hidden=256, layers=2, embed=32):
        super().__init__()
        self.embed = nn.Embedding(len(CHARS), embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, len(CHARS))

    def forward(self, ids):
        """ids (batch, time) -> next-character logits (batch, time, characters)."""
        return self.out(self.lstm(self.embed(ids))[0])


def text_ids(manifest):
    """The transcripts of a manifest as one tensor of character ids, sentences ended by a line break."""
    lines = [json.loads(line)["text"] for line in Path(manifest).read_text().splitlines() if line.strip()]
    return torch.tensor([CHARS.index(c) for c in "\n".join(lines) + "\n"], dtype=torch.long)


@torch.no_grad()
def bits_per_char(model, ids, length=200):
    """Mean bits per predicted character over consecutive chunks of `length` + 1 characters."""
    length = min(length, len(ids) - 1)  # a short text is one chunk
    n = (len(ids) - 1) // length
    x = ids[: n * length].view(n, length)
    y = ids[1 : n * length + 1].view(n, length)
    logits = model.eval()(x)
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))) / math.log(2)


def train(model, ids, steps, lr=3e-3, batch=32, length=100, seed=0):
    """Adam on random windows, the learning rate decaying to a tenth (cosine); trains in place."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=lr / 10)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, len(ids) - length - 1, (batch,), generator=gen)
        window = torch.stack([ids[s : s + length + 1] for s in start.tolist()])
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()
