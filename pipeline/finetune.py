"""Fine-tuning a (factored) model for a fixed number of steps on `train`, resumable.

The factors U and V are trained directly (the ranks stay as they are); the loop, loss, state files
and resume are the training run's (`pipeline.train.Run`). Optionally the loss mixes in distillation
from a teacher (the uncompressed model): the KL divergence from its CTC and decoder distributions.
The result goes to `OUT/model.safetensors`, written last, so its presence means the fine-tuning
finished.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.atomic import read_json, write_json
from pipeline.data.dataset import SpeechDataset, duration_batches
from pipeline.errors import PipelineError
from pipeline.lowrank.checkpoint import load_checkpoint, save_checkpoint
from pipeline.model.evaluate import evaluate
from pipeline.train import Run, TrainConfig, load_state, new_progress


class DistillLoss(torch.nn.Module):
    """(1 - weight) * the student's own loss + weight * KL(teacher || student), the KL taken over the
    CTC posteriors of valid frames and the teacher-forced decoder's outputs, mixed as the model's
    CTC weight mixes its losses."""

    def __init__(self, student, teacher, weight):
        super().__init__()
        self.student, self.weight = student, weight
        self.teacher = [teacher.eval()]  # a list: not a submodule, so never trained or saved

    def forward(self, feats, lengths, targets, tlens, label_smoothing=0.1, ctc_only=False):
        out = self.student.outputs(feats, lengths, targets, tlens, ctc_only)
        loss, parts = self.student.loss_of(out, targets, tlens, label_smoothing)
        with torch.no_grad():
            ref = self.teacher[0].outputs(feats, lengths, targets, tlens, ctc_only)
        valid = torch.arange(out[0].shape[1], device=out[1].device)[None, :] < out[1][:, None]
        kd = F.kl_div(out[0][valid], ref[0][valid], log_target=True, reduction="batchmean")
        if out[2] is not None:
            w = self.student.cfg.ctc_weight
            kd = w * kd + (1 - w) * F.kl_div(out[2], ref[2], log_target=True, reduction="batchmean")
        return (1 - self.weight) * loss + self.weight * kd, {**parts, "kd": float(kd.detach())}


def finetune(model, cmvn, train_rows, out, steps, lr=3e-4, batch_seconds=64.0, threads=2, seed=0,
             provenance=None, progress=True, teacher=None, distill=0.0, augment=True,
             rank=0, world=1):
    """Trains `model` in place for `steps` steps (resuming from OUT/state.pt if present); returns it.
    teacher, distill: with a teacher and distill > 0, the loss is DistillLoss with that weight.
    augment: speed perturbation as in training. No SpecAugment: the baseline ended its training
    without it, and fine-tuning with it made even the dense baseline worse. rank, world: under
    torchrun (DDP), each process takes its share of every batch and rank 0 alone writes."""
    if distill and teacher is None:
        raise PipelineError("fine-tuning: distillation needs a teacher model")
    out = Path(out)
    final = out / "model.safetensors"
    tcfg = TrainConfig(epochs=1, lr=lr, warmup_steps=max(1, steps // 10), batch_seconds=batch_seconds,
                       threads=threads, seed=seed, save_every_steps=max(1, min(50, steps // 4)), min_lr_ratio=0.1,
                       specaugment=False, **({} if augment else {"speeds": (1.0,)}))
    torch.set_num_threads(threads)
    rows = [r for r in train_rows if r["duration"] <= tcfg.max_duration]
    batches = duration_batches(rows, tcfg.batch_seconds, seed=seed, epoch=0)
    if not batches:
        raise PipelineError("fine-tuning: the training manifest has no usable utterance")
    batches = (batches * (steps // len(batches) + 1))[:steps]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tcfg.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    st = load_state(out, model, opt) if (out / "state.pt").exists() else new_progress()
    loss = DistillLoss(model, teacher, distill) if distill else None
    run = Run(out, model, opt, cmvn, tcfg, st, progress, provenance or {}, rank, world, loss=loss)
    ds = SpeechDataset(rows, cmvn, speeds=tcfg.speeds, specaugment=tcfg.specaugment, seed=seed)
    if st["batch"] < len(batches):
        run.train_epoch(ds, batches, 0, steps)
        run.save_state()
    if rank == 0:
        save_checkpoint(final, model.eval(), cmvn, provenance, {"finetune_steps": steps})
    return model


def cached_scores(path, checkpoint, rows, threads):
    """Greedy scores of a checkpoint on `rows`, cached in `path` (read back, not recomputed, when it is there)."""
    if path.exists():
        return read_json(path)
    torch.set_num_threads(threads)
    model, cmvn, _ = load_checkpoint(checkpoint)
    metrics, _ = evaluate(model, cmvn, rows, progress=False)
    write_json(path, metrics)
    return metrics
