"""Decoding a manifest and scoring it: WER and CER with their error counts (jiwer)."""
import jiwer
import torch
from tqdm import tqdm

from pipeline.data.dataset import SpeechDataset, collate, duration_batches
from pipeline.model.decode import DecodeConfig, decode, greedy


def _batches(model, cmvn, rows, batch_seconds, desc, progress):
    """(row indices, features, lengths) of duration-sorted batches of `rows`, the model in eval mode
    and gradients off while the caller works on each."""
    ds = SpeechDataset(rows, cmvn)
    model.eval()
    with torch.no_grad():
        for idx in tqdm(duration_batches(rows, batch_seconds, max_batch=32), desc=desc, unit="batch",
                        disable=not progress, leave=False):
            feats, lengths, _, _ = collate([ds[i] for i in idx])
            yield idx, feats, lengths


def transcribe_rows(model, cmvn, rows, cfg=DecodeConfig(), batch_seconds=120, progress=True, lm=None):
    """Hypotheses in the order of `rows`; `lm` (a CharLM) fuses into beam search."""
    hyps = [None] * len(rows)
    for idx, feats, lengths in _batches(model, cmvn, rows, batch_seconds, "decoding", progress):
        for i, h in zip(idx, decode(model, feats, lengths, cfg, lm)):
            hyps[i] = h
    return hyps


def encoder_states(model, cmvn, rows, batch_seconds=120, progress=True):
    """(row index, that utterance's encoder states (1, T', D)) for every row, encoded in batches."""
    for idx, feats, lengths in _batches(model, cmvn, rows, batch_seconds, "encoding", progress):
        enc, enc_lengths, _ = model.encode(feats, lengths)
        for j, i in enumerate(idx):
            yield i, enc[j:j + 1, : enc_lengths[j]]


def score(refs, hyps):
    """WER and CER with substitutions, deletions, insertions. Empty hypotheses count as deletions."""
    w = jiwer.process_words(refs, [h if h else "" for h in hyps])
    c = jiwer.process_characters(refs, [h if h else "" for h in hyps])
    return {"wer": w.wer, "cer": c.cer, "utterances": len(refs), "words": sum(len(r.split()) for r in refs),
            "substitutions": w.substitutions, "deletions": w.deletions, "insertions": w.insertions,
            "char_substitutions": c.substitutions, "char_deletions": c.deletions, "char_insertions": c.insertions}


def evaluate(model, cmvn, rows, cfg=DecodeConfig(), progress=True, lm=None):
    hyps = transcribe_rows(model, cmvn, rows, cfg, progress=progress, lm=lm)
    return score([r["text"] for r in rows], hyps), hyps


class SubsetWer:
    """The recogniser's metric on a fixed set of rows, for a search that scores many models on it:
    features computed once and batched, greedy decoding; {"metric": WER, "wer", "cer", ...}."""

    def __init__(self, cmvn, rows, batch_seconds=200):
        self.rows = rows
        ds = SpeechDataset(rows, cmvn)
        self.batches = []
        for idx in duration_batches(rows, batch_seconds, max_batch=64):
            feats, lengths, _, _ = collate([ds[i] for i in idx])
            self.batches.append((idx, feats, lengths))

    def __call__(self, model):
        hyps = [None] * len(self.rows)
        with torch.no_grad():
            for idx, feats, lengths in self.batches:
                for i, h in zip(idx, greedy(model, feats, lengths)):
                    hyps[i] = h
        s = score([r["text"] for r in self.rows], hyps)
        return {"metric": s["wer"], **s}
