"""Greedy (batched) and beam-search decoding of the attention decoder, with optional shallow fusion of
a character LM and CTC rescoring of the final beam; and greedy decoding of the CTC head alone (no
decoder: the cheapest on a device)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.data.vocab import BLANK, EOS, SOS
from pipeline.data.vocab import decode as ids_to_text
from pipeline.model.beam import BeamConfig
from pipeline.model.beam import beam_search as beam_core


@dataclass
class DecodeConfig:
    beam: int = 1                 # 1: greedy
    length_penalty: float = 1.0   # hypotheses ranked by log-prob / length ** length_penalty
    ctc_weight: float = 0.0       # > 0: final beam rescored by (1 - w) * attention + w * CTC
    max_len_ratio: float = 1.5    # at most this many characters per encoder frame
    ctc_len_ratio: float = 1.5    # ... and at most this times the CTC best path's length (0: off)
    ctc_len_margin: int = 5       # ... plus this many
    decoder: str = "attention"    # or "ctc": greedy CTC (best path), beam and ctc_weight unused
    lm_weight: float = 0.0        # shallow fusion with a language model (given to decode) at this weight
    length_bonus: float = 0.0     # added to a hypothesis's score per emitted character (beam search)


def decode(model, feats, lengths, cfg=DecodeConfig(), lm=None):
    """Transcripts of a batch by the decoding `cfg` names; `lm` (a CharLM) fuses into beam search."""
    if cfg.decoder == "ctc":
        return ctc_greedy(model, feats, lengths)
    if cfg.decoder != "attention":
        raise ValueError(f"decoder {cfg.decoder!r}: 'attention' or 'ctc'")
    if cfg.beam <= 1:
        if lm is not None:
            raise ValueError("a language model fuses into beam search: set beam > 1")
        return greedy(model, feats, lengths, cfg)
    return beam_search(model, feats, lengths, cfg, lm)


@torch.no_grad()
def ctc_greedy(model, feats, lengths):
    """Best path of the CTC head: the most likely token per frame, repeats merged, blanks dropped."""
    enc, enc_lengths, _ = model.encode(feats, lengths)
    return [ids_to_text(p) for p in ctc_best_paths(model, enc, enc_lengths)]


def ctc_best_paths(model, enc, enc_lengths):
    best = model.ctc_log_probs(enc).argmax(-1)
    out = []
    for row, n in zip(best.tolist(), enc_lengths.tolist()):
        row = row[:n]
        out.append([t for i, t in enumerate(row) if t != BLANK and (i == 0 or t != row[i - 1])])
    return out


def max_steps(model, enc, enc_lengths, cfg):
    """Each utterance's cap on output characters (B,): max_len_ratio per encoder frame (at least 8) and
    ctc_len_ratio x the CTC best path's length + ctc_len_margin. An attention decoder that loops runs
    to its cap, so the CTC head's length estimate bounds the damage."""
    caps = (enc_lengths.float() * cfg.max_len_ratio).long().clamp(min=8)
    if cfg.ctc_len_ratio > 0:
        ctc = torch.tensor([len(p) for p in ctc_best_paths(model, enc, enc_lengths)])
        caps = torch.minimum(caps, (ctc.float() * cfg.ctc_len_ratio).long() + cfg.ctc_len_margin)
    return caps


@torch.no_grad()
def greedy(model, feats, lengths, cfg=DecodeConfig()):
    enc, enc_lengths, mask = model.encode(feats, lengths)
    return greedy_from_encoder(model, enc, enc_lengths, mask, cfg)


@torch.no_grad()
def greedy_from_encoder(model, enc, enc_lengths, mask, cfg=DecodeConfig()):
    """Batched greedy decoding of encoder states (from PyTorch or from another runtime)."""
    dec = model.decoder
    keys = dec.attention.key(enc)
    state = dec.init_state(enc, mask)
    tokens = torch.full((enc.shape[0],), SOS, dtype=torch.long)
    done = torch.zeros(enc.shape[0], dtype=torch.bool)
    out, caps = [], max_steps(model, enc, enc_lengths, cfg)
    for u in range(int(caps.max())):
        logp, state = dec.step(tokens, state, keys, enc, mask)
        tokens = logp.argmax(-1).masked_fill(done, EOS)
        out.append(tokens)
        done |= (tokens == EOS) | (u + 1 >= caps)
        if bool(done.all()):
            break
    seqs = torch.stack(out, 1).tolist()
    return [ids_to_text(s[: s.index(EOS)] if EOS in s else s) for s in seqs]


@torch.no_grad()
def beam_search(model, feats, lengths, cfg=DecodeConfig(beam=5), lm=None):
    """Per-utterance beam search (pipeline/model/beam.py), fused with the language model `lm` (a
    pipeline.model.lm.CharLM) at cfg.lm_weight; returns one transcript per utterance."""
    enc, enc_lengths, _ = model.encode(feats, lengths)
    return [beam_from_encoder(model, enc[i:i + 1, : enc_lengths[i]], cfg, lm) for i in range(enc.shape[0])]


@torch.no_grad()
def beam_from_encoder(model, enc, cfg, lm=None):
    """The transcript of one utterance's encoder states (1, T', D) by beam search."""
    cap = int(max_steps(model, enc, torch.tensor([enc.shape[1]]), cfg)[0])
    rescore = None
    if cfg.ctc_weight > 0:
        ctc_lp = model.ctc_log_probs(enc)[0]
        w = cfg.ctc_weight
        rescore = lambda fin: [(q, (1 - w) * s + w * _ctc_score(ctc_lp, q)) for q, s in fin]  # noqa: E731
    bc = BeamConfig(cfg.beam, cfg.lm_weight if lm is not None else 0.0, cfg.length_bonus, cfg.length_penalty)
    best = beam_core(DecoderSteps(model, enc), cap, bc, SOS, EOS, LmSteps(lm) if lm is not None else None, rescore)
    return ids_to_text(best)


class DecoderSteps:
    """The attention decoder as beam.py's step object: a batch of live hypotheses of one utterance."""

    def __init__(self, model, enc):
        self.dec, self.enc = model.decoder, enc
        self.mask = torch.ones(1, enc.shape[1], dtype=torch.bool)
        self.keys = self.dec.attention.key(enc)
        self.state = self.dec.init_state(enc, self.mask)

    def step(self, tokens):
        k = len(tokens)
        logp, self.state = self.dec.step(torch.tensor(tokens), self.state, self.keys.expand(k, -1, -1),
                                         self.enc.expand(k, -1, -1), self.mask.expand(k, -1))
        return logp.numpy()

    def select(self, rows):
        i = torch.tensor(rows)
        (h, c), ctx, w = self.state
        self.state = (h[:, i], c[:, i]), ctx[i], w[i]


class LmSteps:
    """A CharLM as beam.py's step object."""

    def __init__(self, lm):
        self.lm, self.state = lm.eval(), None

    def step(self, tokens):
        logp, self.state = self.lm.step(torch.tensor(tokens), self.state)
        return logp.numpy()

    def select(self, rows):
        i = torch.tensor(rows)
        self.state = tuple(s[:, i] for s in self.state)


def _ctc_score(ctc_lp, seq):
    if not seq:
        return float(ctc_lp[:, BLANK].sum())
    t = torch.tensor([seq])
    return -float(F.ctc_loss(ctc_lp[:, None], t, torch.tensor([ctc_lp.shape[0]]), torch.tensor([len(seq)]),
                             blank=BLANK, reduction="sum", zero_infinity=True))
