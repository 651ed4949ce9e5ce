"""The character language model as a compression task:

    python -m pipeline compress --task examples.char_lm.task:task --task-arg data=corpus/default

The factory trains the model on `train`'s transcripts the first time (a few minutes on two cores)
and keeps the weights in `cache`; it is judged by bits per character on `dev`'s transcripts (the
search on a fifth of them) and fine-tuned on `train`'s. Only its LSTM is searched.
"""
from pathlib import Path

import torch

from examples.char_lm.lm import CharLM, bits_per_char, text_ids, train
from pipeline.task import Task


def task(data="corpus/default", hidden=256, layers=2, train_steps=1500, finetune_lr=1e-3, cache="runs/char_lm"):
    data = Path(data)
    train_ids, dev_ids = text_ids(data / "train.jsonl"), text_ids(data / "dev.jsonl")
    torch.manual_seed(0)
    model = CharLM(hidden, layers)
    weights = Path(cache) / f"char_lm-{hidden}x{layers}-{train_steps}.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights))
    else:
        train(model, train_ids, train_steps)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights.with_suffix(".tmp"))
        weights.with_suffix(".tmp").replace(weights)
    subset = dev_ids[: len(dev_ids) // 5]
    length = min(200, len(train_ids))  # the whitened factorisation's statistics: up to 64 windows of train text
    windows = max(1, min(64, len(train_ids) // length))
    calibration = train_ids[: windows * length].view(windows, length)
    return Task(model=model.eval(),
                evaluate=lambda m: bits_per_char(m, dev_ids),
                evaluate_subset=lambda m: bits_per_char(m, subset),
                finetune=lambda m, steps: train(m, train_ids, steps, lr=finetune_lr, seed=1),
                calibrate=lambda m: m(calibration),
                example_inputs=(torch.zeros(1, 64, dtype=torch.long),),
                metric="bits/char", types=["LSTM"], name="char-lm")
