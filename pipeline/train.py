"""`python -m pipeline train`: joint CTC/attention training with resume after interruption.

A run folder holds `config.json` (model and training config), `state.pt` (everything needed to
resume: model, optimiser, scheduler, position in the epoch, history), `last.safetensors`,
`best.safetensors` (lowest dev WER) and `history.jsonl` (one line per epoch). Every file is
written atomically; `--resume` continues from `state.pt` exactly where it stopped.
"""
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.data.dataset import SpeechDataset, collate, duration_batches
from pipeline.data.features import Cmvn
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate
from pipeline.model.asr import ASRModel
from pipeline.model.checkpoint import save_checkpoint
from pipeline.model.config import ModelConfig


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_seconds: float = 64.0     # audio per batch (padding included)
    max_duration: float = 16.0      # longer training utterances are skipped
    lr: float = 1e-3
    warmup_steps: int = 800
    min_lr_ratio: float = 0.05      # cosine decay to lr * this at the last step
    weight_decay: float = 1e-6
    grad_clip: float = 5.0
    label_smoothing: float = 0.1
    speeds: tuple = (0.9, 1.0, 1.1)
    specaugment: bool = True
    threads: int = 2
    seed: int = 0
    save_every_steps: int = 200
    dev_max_utterances: int = 600   # dev WER each epoch on an evenly spaced subset

    @classmethod
    def from_dict(cls, d, where):
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise PipelineError(f"{where}: unknown training config field(s) {', '.join(bad)}")
        if "speeds" in d:
            d = {**d, "speeds": tuple(d["speeds"])}
        return cls(**d)


def load_config_file(path):
    """A JSON file with optional `model` and `train` objects overriding the defaults."""
    if path is None:
        return ModelConfig(), TrainConfig()
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: cannot read config ({e})") from None
    return (ModelConfig.from_dict(obj.get("model", {}), f"{path}: field 'model'"),
            TrainConfig.from_dict(obj.get("train", {}), f"{path}: field 'train'"))


def lr_at(step, total, cfg):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def _subset(rows, n):
    step = max(1, math.ceil(len(rows) / n))
    return rows[::step]


def train(data_dir, out_dir, config_path=None, resume=False, epochs=None, progress=True):
    data_dir, out = Path(data_dir), Path(out_dir)
    state_path = out / "state.pt"
    if resume:
        if not state_path.exists():
            raise PipelineError(f"{state_path}: nothing to resume (no state file)")
        saved = json.loads((out / "config.json").read_text())
        mcfg = ModelConfig.from_dict(saved["model"], f"{out}/config.json")
        tcfg = TrainConfig.from_dict(saved["train"], f"{out}/config.json")
    else:
        if state_path.exists():
            raise PipelineError(f"{out}: holds a training run already; pass --resume or choose another --out")
        mcfg, tcfg = load_config_file(config_path)
    if epochs is not None:
        tcfg.epochs = epochs
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)

    cmvn = Cmvn.load(data_dir / "cmvn.json")
    train_rows = [r for r in read_manifest(data_dir / "train.jsonl") if r["duration"] <= tcfg.max_duration]
    dev_rows = _subset(read_manifest(data_dir / "dev.jsonl"), tcfg.dev_max_utterances)
    model = ASRModel(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    st = {"epoch": 0, "batch": 0, "step": 0, "best_wer": None, "history": []}
    if resume:
        saved_state = torch.load(state_path, weights_only=False)
        model.load_state_dict(saved_state["model"])
        opt.load_state_dict(saved_state["optimizer"])
        st = saved_state["progress"]
    write_json(out / "config.json", {"model": mcfg.to_dict(), "train": asdict(tcfg), "data": str(data_dir)})

    ds = SpeechDataset(train_rows, cmvn, speeds=tcfg.speeds, specaugment=tcfg.specaugment, seed=tcfg.seed)
    steps_per_epoch = len(duration_batches(train_rows, tcfg.batch_seconds))
    total_steps = steps_per_epoch * tcfg.epochs
    provenance = {"run": str(out), "data_manifests": [str(data_dir / "train.jsonl"), str(data_dir / "dev.jsonl")]}

    def save_state():
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "progress": st}, tmp)

    for epoch in range(st["epoch"], tcfg.epochs):
        ds.epoch = epoch
        batches = duration_batches(train_rows, tcfg.batch_seconds, seed=tcfg.seed, epoch=epoch)
        model.train()
        bar = tqdm(total=len(batches), initial=st["batch"], desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                   unit="batch", disable=not progress)
        t0, utts = time.time(), 0
        for bi in range(st["batch"], len(batches)):
            feats, lengths, targets, tlens = collate([ds[i] for i in batches[bi]])
            for g in opt.param_groups:
                g["lr"] = lr_at(st["step"], total_steps, tcfg)
            torch.manual_seed(tcfg.seed * 1_000_003 + st["step"])  # dropout: exact on resume
            loss, parts = model.loss(feats, lengths, targets, tlens, tcfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            if torch.isfinite(gnorm):
                opt.step()
            st["step"] += 1
            st["batch"] = bi + 1
            utts += len(batches[bi])
            bar.set_postfix(loss=f"{loss.item():.3f}", ctc=f"{parts['ctc']:.2f}", att=f"{parts['att']:.2f}",
                            utt_s=f"{utts / (time.time() - t0):.1f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
            bar.update(1)
            if st["step"] % tcfg.save_every_steps == 0:
                save_state()
        bar.close()
        metrics, _ = evaluate(model, cmvn, dev_rows, progress=progress)
        entry = {"epoch": epoch + 1, "step": st["step"], "dev_wer": metrics["wer"], "dev_cer": metrics["cer"],
                 "time": time.time()}
        st["history"].append(entry)
        st["epoch"], st["batch"] = epoch + 1, 0
        print(f"epoch {epoch + 1}: dev WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} "
              f"({metrics['utterances']} utterances)", flush=True)
        save_checkpoint(out / "last.safetensors", model, cmvn, provenance,
                        {"dev_wer": metrics["wer"], "epoch": epoch + 1})
        if st["best_wer"] is None or metrics["wer"] < st["best_wer"]:
            st["best_wer"] = metrics["wer"]
            save_checkpoint(out / "best.safetensors", model, cmvn, provenance,
                            {"dev_wer": metrics["wer"], "epoch": epoch + 1})
        write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in st["history"]))
        save_state()
    return st
