"""Audit of transcript-audio agreement in a manifest: each utterance's CTC loss per character under a
trained model, summarised per source and speaker, with the worst utterances listed.

    python scripts/ctc_alignment_audit.py --model CKPT --manifest corpus/default/train.jsonl \
        --out results/ctc_alignment_audit.json [--limit N] [--threads 2]

A segment whose text does not match its audio (a bad cut of the game's line timings, say) scores far
above the others of its source; utterances with too few encoder frames for their characters
(CTC-infeasible) are counted apart, and the frames per CTC label (characters plus the blanks that
repeated letters need) are summarised per source: near 1, CTC must emit a character on nearly every
frame.
"""
import argparse
import collections
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.data.dataset import SpeechDataset, collate, duration_batches
from pipeline.data.manifest import read_manifest
from pipeline.data.vocab import BLANK
from pipeline.lowrank.checkpoint import load_checkpoint


def losses(model, cmvn, rows, batch_seconds=120):
    ds = SpeechDataset(rows, cmvn)
    out = [None] * len(rows)
    with torch.no_grad():
        for idx in tqdm(duration_batches(rows, batch_seconds, max_batch=32), desc="audit", unit="batch"):
            feats, lengths, targets, tlens = collate([ds[i] for i in idx])
            lp, enc_lengths, _, _ = model.outputs(feats, lengths, targets, tlens, ctc_only=True)
            per = F.ctc_loss(lp.transpose(0, 1), targets, enc_lengths, tlens, blank=BLANK, reduction="none",
                             zero_infinity=False)
            for j, i in enumerate(idx):
                t = targets[j, : tlens[j]]
                labels = int(tlens[j]) + int((t[1:] == t[:-1]).sum())
                out[i] = (float(per[j]) / int(tlens[j]), int(enc_lengths[j]), int(tlens[j]), labels)
    return out


def summary(values):
    v = np.array(values)
    return {"n": len(v), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99))} if len(v) else {"n": 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0, help="evenly spaced utterances (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worst", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cmvn, _ = load_checkpoint(args.model)
    rows = read_manifest(args.manifest)
    if args.limit:
        rows = rows[:: max(1, len(rows) // args.limit)]
    scored = losses(model.eval(), cmvn, rows)
    feasible = [(r, s) for r, s in zip(rows, scored) if np.isfinite(s[0])]
    by_source, by_speaker = collections.defaultdict(list), collections.defaultdict(list)
    for r, s in feasible:
        by_source[r.get("source", "?")].append(s[0])
        by_speaker[r.get("speaker", "?")].append(s[0])
    ratio = collections.defaultdict(list)
    for r, s in zip(rows, scored):
        ratio[r.get("source", "?")].append(s[1] / s[3])
    worst = sorted(feasible, key=lambda rs: -rs[1][0])[: args.worst]
    report = {
        "model": args.model, "manifest": args.manifest, "utterances": len(rows),
        "infeasible": sum(1 for s in scored if not np.isfinite(s[0])),
        "loss_per_char_by_source": {k: summary(v) for k, v in sorted(by_source.items())},
        "frames_per_label_by_source": {k: {"median": float(np.median(v)), "below_1.3": float(np.mean(np.array(v) < 1.3)),
                                           "below_1": float(np.mean(np.array(v) < 1))} for k, v in sorted(ratio.items())},
        "loss_per_char_by_speaker": {k: summary(v) for k, v in sorted(by_speaker.items())},
        "worst": [{"id": r["id"], "loss_per_char": s[0], "frames": s[1], "chars": s[2], "text": r["text"],
                   "audio": r["audio_filepath"]} for r, s in worst],
    }
    write_json(args.out, report)
    for k, v in report["loss_per_char_by_source"].items():
        print(f"{k}: loss per char {v}; frames per label {report['frames_per_label_by_source'][k]}")
    print(f"infeasible: {report['infeasible']} of {len(rows)}; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
