"""A short training probe of how fast the CTC loss leaves its plateau (~2.9 nats per character, the
unigram level) for a model variant: a few hundred steps on a subset of `train`, loss every 25 steps.

    python scripts/ctc_plateau_probe.py --data corpus/default [--subsampling 4] [--ctc-weight 1] \
        [--enc-layers 2 --enc-hidden 128] [--utterances 3000] [--steps 400] [--lr 1.5e-3] [--sorted]
"""
import argparse
import time

import torch

from pipeline.data.dataset import SpeechDataset, collate, duration_batches
from pipeline.data.features import Cmvn
from pipeline.data.manifest import read_manifest
from pipeline.model.asr import ASRModel
from pipeline.model.config import ModelConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--subsampling", type=int, default=4)
    ap.add_argument("--ctc-weight", type=float, default=1.0)
    ap.add_argument("--enc-layers", type=int, default=2)
    ap.add_argument("--enc-hidden", type=int, default=128)
    ap.add_argument("--utterances", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-seconds", type=float, default=40.0)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--source", help="only utterances of this source (tts, uqm, ...)")
    ap.add_argument("--sorted", action="store_true", help="shortest batches first (SortaGrad) instead of shuffled")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [r for r in read_manifest(f"{args.data}/train.jsonl")
            if r["duration"] <= 10 and args.source in (None, r.get("source"))][: args.utterances]
    ds = SpeechDataset(rows, Cmvn.load(f"{args.data}/cmvn.json"))
    cfg = ModelConfig(enc_layers=args.enc_layers, enc_hidden=args.enc_hidden, subsampling=args.subsampling,
                      ctc_weight=args.ctc_weight, dec_hidden=128, att_dim=64)
    model = ASRModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    batches = duration_batches(rows, args.batch_seconds, seed=None if args.sorted else 0)
    t0, ctc_sum, n = time.time(), 0.0, 0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 100)
        feats, lengths, targets, tlens = collate([ds[i] for i in batches[step % len(batches)]])
        if args.ctc_weight == 1.0:  # pure CTC: the decoder would only cost time
            enc, enc_lengths, _ = model.encode(feats, lengths)
            loss = torch.nn.functional.ctc_loss(model.ctc_log_probs(enc).transpose(0, 1), targets, enc_lengths,
                                                tlens, zero_infinity=True)
            parts = {"ctc": loss.item()}
        else:
            loss, parts = model.loss(feats, lengths, targets, tlens)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctc_sum, n = ctc_sum + parts["ctc"], n + 1
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: ctc {ctc_sum / n:.3f} ({time.time() - t0:.0f} s)", flush=True)
            ctc_sum, n = 0.0, 0


if __name__ == "__main__":
    main()
