"""Write the model card of a trained checkpoint from its header, its run's history and measured WERs.

    python benchmarks/model_card.py --model assets/baseline/model.safetensors --run runs/baseline \
        --wer results/baseline_wer.json [--pocketsphinx results/pocketsphinx_wer.json] \
        --out assets/baseline/MODEL_CARD.md
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from pipeline.atomic import write_text
from pipeline.data.manifest import read_manifest
from pipeline.lowrank.checkpoint import load_checkpoint


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/baseline/model.safetensors")
    ap.add_argument("--run", default="runs/baseline")
    ap.add_argument("--wer", default="results/baseline_wer.json")
    ap.add_argument("--pocketsphinx", default="results/pocketsphinx_wer.json")
    ap.add_argument("--out", default="assets/baseline/MODEL_CARD.md")
    args = ap.parse_args()
    model, _, header = load_checkpoint(args.model)
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    wer = json.loads(Path(args.wer).read_text())
    ps = json.loads(Path(args.pocketsphinx).read_text()) if Path(args.pocketsphinx).exists() else {}
    n = sum(p.numel() for p in model.parameters())
    lstm = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.LSTM) for p in m.parameters())
    train_rows = read_manifest(config["train_manifest"], check_audio=False)
    hours = sum(r["duration"] for r in train_rows) / 3600
    lines = [
        "# Baseline ASR model", "",
        f"`{args.model}`: LSTM encoder, location-aware attention, LSTM decoder over characters, CTC head.", "",
        f"- parameters: {n:,} ({lstm / n:.1%} in LSTM weights)",
        f"- model config: `{json.dumps(header['model_config'])}`",
        f"- training config: `{json.dumps(config['train'])}`",
        f"- training data: `{config['train_manifest']}` ({len(train_rows):,} utterances, {hours:.2f} h), "
        f"dev `{config['dev_manifest']}`",
        f"- trained: {history[-1]['epoch']} epochs, {history[-1]['step']:,} steps, "
        f"{history[-1].get('train_seconds', 0) / 3600:.2f} h of training on {config['train']['threads']} CPU threads",
        f"- selected: lowest dev WER, epoch {header['metrics'].get('epoch')}", "",
        "| epoch | step | dev WER | dev CER |", "|---|---|---|---|",
        *[f"| {h['epoch']} | {h['step']} | {h['dev_wer']:.4f} | {h['dev_cer']:.4f} |" for h in history], "",
        f"Greedy decoding, measured by `{wer['meta']['command']}` ({wer['meta']['machine']}, "
        f"{wer['meta']['threads']} threads); attention decoding is the default, CTC greedy decodes with the "
        "encoder alone:", "",
        "| split | utterances | WER | CER | CTC greedy WER | CTC greedy CER | pocketsphinx WER |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, m in wer["splits"].items():
        ref = next((v["wer"] for k, v in ps.items() if k.endswith(f"/{split}.jsonl")), None)
        ctc = m.get("ctc") or {}
        lines.append(f"| {split} | {m['utterances']} | {m['wer']:.4f} | {m['cer']:.4f} | "
                     f"{ctc.get('wer', float('nan')):.4f} | {ctc.get('cer', float('nan')):.4f} | "
                     f"{'' if ref is None else f'{ref:.4f}'} |")
    lines += ["", "By source within each split (tts: synthetic voices; uqm: game recordings; asterisk: "
              "telephony prompts):", "", "| split | source | utterances | WER | CER | CTC greedy WER |",
              "|---|---|---|---|---|---|"]
    for split, m in wer["splits"].items():
        for src, b in (m.get("by_source") or {}).items():
            lines.append(f"| {split} | {src} | {b['utterances']} | {b['wer']:.4f} | {b['cer']:.4f} | {b['ctc_wer']:.4f} |")
    lines += ["", "The run's changes of settings during training, the goals this model misses and what "
              "limits it: the README's section \"Status\"."]
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
