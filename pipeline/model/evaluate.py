"""Decoding a manifest and scoring it: WER and CER with their error counts (jiwer)."""
import jiwer
import torch
from tqdm import tqdm

from pipeline.data.dataset import SpeechDataset, collate, duration_batches
from pipeline.model.decode import DecodeConfig, decode


def transcribe_rows(model, cmvn, rows, cfg=DecodeConfig(), batch_seconds=120, progress=True):
    """Hypotheses in the order of `rows`."""
    ds = SpeechDataset(rows, cmvn)
    hyps = [None] * len(rows)
    batches = duration_batches(rows, batch_seconds, max_batch=32)
    model.eval()
    with torch.no_grad():
        for idx in tqdm(batches, desc="decoding", unit="batch", disable=not progress, leave=False):
            feats, lengths, _, _ = collate([ds[i] for i in idx])
            out = decode(model, feats, lengths, cfg)
            for i, h in zip(idx, out):
                hyps[i] = h
    return hyps


def score(refs, hyps):
    """WER and CER with substitutions, deletions, insertions. Empty hypotheses count as deletions."""
    w = jiwer.process_words(refs, [h if h else "" for h in hyps])
    c = jiwer.process_characters(refs, [h if h else "" for h in hyps])
    return {"wer": w.wer, "cer": c.cer, "utterances": len(refs), "words": sum(len(r.split()) for r in refs),
            "substitutions": w.substitutions, "deletions": w.deletions, "insertions": w.insertions,
            "char_substitutions": c.substitutions, "char_deletions": c.deletions, "char_insertions": c.insertions}


def evaluate(model, cmvn, rows, cfg=DecodeConfig(), progress=True):
    hyps = transcribe_rows(model, cmvn, rows, cfg, progress=progress)
    return score([r["text"] for r in rows], hyps), hyps
