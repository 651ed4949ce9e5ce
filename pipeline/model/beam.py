"""Beam search with shallow fusion, written once for the Python runtimes (PyTorch and onnxruntime)
and mirrored step for step by the native decoder (csrc/beam_search.cc); numpy only, no torch.

A hypothesis extended by token v scores

    score + log p_asr(v) + lm_weight * log p_lm(v) + length_bonus

(<eos> included: the LM's end-of-sentence probability judges where a sentence may stop). Each step
ranks all extensions of the live hypotheses (ties: the lower row x vocabulary index first), takes
the best 2 x beam, moves those ending in <eos> to the finished list and keeps the best `beam` others.
The search stops at the length cap, when nothing is live, or when `beam` hypotheses have finished
and the best finished one beats every live one even if each live one gained the length bonus at
every step still allowed (with a bonus a longer hypothesis can overtake a finished one; log-probs
never raise a score). Hypotheses are compared by score / (characters + 1) ** length_penalty. Scores
add in float64.

`asr` and `lm` are step objects: `step(tokens)` feeds each live hypothesis its last token and
returns log-probabilities (k, vocab); `select(rows)` keeps the states of the parent rows, in order.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class BeamConfig:
    beam: int = 8
    lm_weight: float = 0.0       # lambda of shallow fusion (no LM: 0)
    length_bonus: float = 0.0    # added per emitted token, <eos> included
    length_penalty: float = 1.0  # hypotheses compared by score / (characters + 1) ** length_penalty


def normalised(score, chars, length_penalty):
    return score / (max(1, chars + 1) ** length_penalty)


def beam_search(asr, cap, cfg, sos, eos, lm=None, rescore=None):
    """The best token sequence (without <sos>/<eos>). rescore: optional [(seq, score)] -> same, applied
    to the finished hypotheses before the final choice (CTC rescoring)."""
    seqs, scores, finished = [[]], np.zeros(1), []
    last = [sos]
    for u in range(cap):
        total = scores[:, None] + asr.step(last).astype(np.float64)
        if lm is not None:
            total += cfg.lm_weight * lm.step(last).astype(np.float64)
        total += cfg.length_bonus
        vocab, flat = total.shape[1], total.ravel()
        rows, new_seqs, new_scores = [], [], []
        for idx in np.argsort(-flat, kind="stable")[: 2 * cfg.beam]:
            i, tok = divmod(int(idx), vocab)
            if tok == eos:
                finished.append((seqs[i], float(flat[idx])))
            elif len(rows) < cfg.beam:
                rows.append(i)
                new_seqs.append(seqs[i] + [tok])
                new_scores.append(flat[idx])
        if not rows:
            break
        asr.select(rows)
        if lm is not None:
            lm.select(rows)
        seqs, scores, last = new_seqs, np.array(new_scores), [s[-1] for s in new_seqs]
        if len(finished) >= cfg.beam:
            hope = max(0.0, cfg.length_bonus) * (cap - u - 1)
            best_done = max(normalised(s, len(q), cfg.length_penalty) for q, s in finished)
            if best_done > max(normalised(s + hope, len(q), cfg.length_penalty) for q, s in zip(seqs, scores)):
                break
    if not finished:
        finished = [(q, float(s)) for q, s in zip(seqs, scores)]
    if rescore is not None:
        finished = rescore(finished)
    return max(finished, key=lambda f: normalised(f[1], len(f[0]), cfg.length_penalty))[0]
