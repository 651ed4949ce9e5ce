"""Fine-tuning a (factored) model for a fixed number of steps on `train`, resumable.

The factors U and V are trained directly (the ranks stay as they are); the loop, loss, state files
and resume are the training run's (`pipeline.train.Run`). The result goes to `OUT/model.safetensors`,
written last, so its presence means the fine-tuning finished.
"""
from pathlib import Path

import torch

from pipeline.data.dataset import SpeechDataset, duration_batches
from pipeline.errors import PipelineError
from pipeline.model.checkpoint import save_checkpoint
from pipeline.train import Run, TrainConfig, load_state, new_progress


def finetune(model, cmvn, train_rows, out, steps, lr=3e-4, batch_seconds=64.0, threads=2, seed=0,
             provenance=None, progress=True):
    """Trains `model` in place for `steps` steps (resuming from OUT/state.pt if present); returns it."""
    out = Path(out)
    final = out / "model.safetensors"
    tcfg = TrainConfig(epochs=1, lr=lr, warmup_steps=max(1, steps // 10), batch_seconds=batch_seconds,
                       threads=threads, seed=seed, save_every_steps=max(1, min(50, steps // 4)), min_lr_ratio=0.1)
    torch.set_num_threads(threads)
    rows = [r for r in train_rows if r["duration"] <= tcfg.max_duration]
    batches = duration_batches(rows, tcfg.batch_seconds, seed=seed, epoch=0)
    if not batches:
        raise PipelineError("fine-tuning: the training manifest has no usable utterance")
    batches = (batches * (steps // len(batches) + 1))[:steps]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tcfg.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    st = load_state(out, model, opt) if (out / "state.pt").exists() else new_progress()
    run = Run(out, model, opt, cmvn, tcfg, st, progress, provenance or {})
    ds = SpeechDataset(rows, cmvn, speeds=tcfg.speeds, specaugment=tcfg.specaugment, seed=seed)
    if st["batch"] < len(batches):
        run.train_epoch(ds, batches, 0, steps)
        run.save_state()
    save_checkpoint(final, model.eval(), cmvn, provenance, {"finetune_steps": steps})
    return model
