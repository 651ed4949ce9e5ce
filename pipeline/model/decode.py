"""Greedy (batched) and beam-search decoding of the attention decoder, with optional CTC rescoring of
the final beam; and greedy decoding of the CTC head alone (no decoder: the cheapest on a device)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.data.vocab import BLANK, EOS, SOS
from pipeline.data.vocab import decode as ids_to_text


@dataclass
class DecodeConfig:
    beam: int = 1                 # 1: greedy
    length_penalty: float = 1.0   # hypotheses ranked by log-prob / length ** length_penalty
    ctc_weight: float = 0.0       # > 0: final beam rescored by (1 - w) * attention + w * CTC
    max_len_ratio: float = 1.5    # at most this many characters per encoder frame
    ctc_len_ratio: float = 1.5    # ... and at most this times the CTC best path's length (0: off)
    ctc_len_margin: int = 5       # ... plus this many
    decoder: str = "attention"    # or "ctc": greedy CTC (best path), beam and ctc_weight unused


def decode(model, feats, lengths, cfg=DecodeConfig()):
    """Transcripts of a batch by the decoding `cfg` names."""
    if cfg.decoder == "ctc":
        return ctc_greedy(model, feats, lengths)
    if cfg.decoder != "attention":
        raise ValueError(f"decoder {cfg.decoder!r}: 'attention' or 'ctc'")
    return greedy(model, feats, lengths, cfg) if cfg.beam <= 1 else beam_search(model, feats, lengths, cfg)


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
def beam_search(model, feats, lengths, cfg=DecodeConfig(beam=5)):
    """Per-utterance beam search; returns one transcript per utterance."""
    enc, enc_lengths, mask = model.encode(feats, lengths)
    return [_beam_one(model, enc[i:i + 1, : enc_lengths[i]], cfg) for i in range(enc.shape[0])]


def _beam_one(model, enc, cfg):
    dec = model.decoder
    mask = torch.ones(1, enc.shape[1], dtype=torch.bool)
    keys = dec.attention.key(enc)
    beams = [([SOS], 0.0, dec.init_state(enc, mask))]
    finished = []
    for _ in range(int(max_steps(model, enc, torch.tensor([enc.shape[1]]), cfg)[0])):
        k = len(beams)
        tokens = torch.tensor([b[0][-1] for b in beams])
        state = _stack_states([b[2] for b in beams])
        logp, state = dec.step(tokens, state, keys.expand(k, -1, -1), enc.expand(k, -1, -1), mask.expand(k, -1))
        scores = torch.tensor([b[1] for b in beams])[:, None] + logp
        top = scores.flatten().topk(min(cfg.beam * 2, scores.numel()))
        new = []
        for s, idx in zip(top.values.tolist(), top.indices.tolist()):
            i, tok = divmod(idx, logp.shape[1])
            seq = beams[i][0] + [tok]
            if tok == EOS:
                finished.append((seq[1:-1], s))
            elif len(new) < cfg.beam:
                new.append((seq, s, _select_state(state, i)))
        beams = new
        best_done = max((_norm(s, len(q) + 1, cfg) for q, s in finished), default=float("-inf"))
        if len(finished) >= cfg.beam and best_done > max(_norm(s, len(q), cfg) for q, s, _ in beams):
            break
        if not beams:
            break
    if not finished:
        finished = [(b[0][1:], b[1]) for b in beams]
    if cfg.ctc_weight > 0:
        ctc_lp = model.ctc_log_probs(enc)[0]
        finished = [(q, (1 - cfg.ctc_weight) * s + cfg.ctc_weight * _ctc_score(ctc_lp, q)) for q, s in finished]
    best = max(finished, key=lambda f: _norm(f[1], len(f[0]) + 1, cfg))
    return ids_to_text(best[0])


def _norm(score, length, cfg):
    return score / (max(1, length) ** cfg.length_penalty)


def _ctc_score(ctc_lp, seq):
    if not seq:
        return float(ctc_lp[:, BLANK].sum())
    t = torch.tensor([seq])
    return -float(F.ctc_loss(ctc_lp[:, None], t, torch.tensor([ctc_lp.shape[0]]), torch.tensor([len(seq)]),
                             blank=BLANK, reduction="sum", zero_infinity=True))


def _stack_states(states):
    hs = torch.cat([s[0][0] for s in states], dim=1)
    cs = torch.cat([s[0][1] for s in states], dim=1)
    ctx = torch.cat([s[1] for s in states], dim=0)
    w = torch.cat([s[2] for s in states], dim=0)
    return (hs, cs), ctx, w


def _select_state(state, i):
    (h, c), ctx, w = state
    return (h[:, i:i + 1], c[:, i:i + 1]), ctx[i:i + 1], w[i:i + 1]
