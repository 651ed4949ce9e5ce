"""`python -m pipeline train`: joint CTC/attention training with resume after interruption.

A run folder holds `config.json` (model and training config), `state.pt` and the
`optimizer-<step>.pt` it names (everything needed to resume: model, optimiser, position in the
epoch, history), `last.safetensors`,
`best.safetensors` (lowest dev WER) and `history.jsonl` (one line per epoch). Every file is
written atomically; `--resume` continues from `state.pt` exactly where it stopped.
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.atomic import atomic_path, read_json, write_json, write_text
from pipeline.data.dataset import SpeechDataset, collate, duration_batches
from pipeline.data.features import Cmvn, compute_cmvn
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError
from pipeline.lowrank.checkpoint import save_checkpoint
from pipeline.model.asr import ASRModel
from pipeline.model.config import ModelConfig
from pipeline.model.evaluate import evaluate


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
    ctc_only_until: int = 0         # steps before this one train the encoder with CTC alone (~3x faster)
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
    obj = read_json(path)
    return (ModelConfig.from_dict(obj.get("model", {}), f"{path}: field 'model'"),
            TrainConfig.from_dict(obj.get("train", {}), f"{path}: field 'train'"))


def lr_at(step, total, cfg):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def dev_subset(rows, n):
    """Every k-th row, k the smallest step that leaves at most n (the dev rows a training run scores)."""
    step = max(1, math.ceil(len(rows) / n))
    return rows[::step]


def resolve_data(data_dir, train_manifest, dev_manifest, out):
    """Manifests and CMVN of a run: a corpus folder, any manifests, or a folder with manifests
    overriding its own. CMVN comes from the folder's cmvn.json for its own train manifest, else it
    is computed from the train manifest and kept in the run folder."""
    if data_dir is None and (train_manifest is None or dev_manifest is None):
        raise PipelineError("give --data DIR, or both --train-manifest and --dev-manifest")
    data_dir = Path(data_dir) if data_dir else None
    train_m = Path(train_manifest) if train_manifest else data_dir / "train.jsonl"
    dev_m = Path(dev_manifest) if dev_manifest else data_dir / "dev.jsonl"
    if data_dir is not None and train_manifest is None and (data_dir / "cmvn.json").exists():
        return train_m, dev_m, Cmvn.load(data_dir / "cmvn.json")
    if (out / "cmvn.json").exists():
        return train_m, dev_m, Cmvn.load(out / "cmvn.json")
    return train_m, dev_m, compute_cmvn(train_m, out / "cmvn.json")


def _configs(out, config_path, resume):
    if resume:
        if not (out / "state.pt").exists():
            raise PipelineError(f"{out / 'state.pt'}: nothing to resume (no state file)")
        saved = read_json(out / "config.json")
        where = f"{out}/config.json"
        return ModelConfig.from_dict(saved["model"], where), TrainConfig.from_dict(saved["train"], where)
    if (out / "state.pt").exists():
        raise PipelineError(f"{out}: holds a training run already; pass --resume or choose another --out")
    return load_config_file(config_path)


def process_group():
    """(rank, world size): under torchrun, joins its process group (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        # compress's ranks wait at a barrier while rank 0 searches, which can take hours
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    return dist.get_rank(), world


class _Loss(torch.nn.Module):
    """The model's loss as a forward pass, so that DistributedDataParallel can wrap it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *batch, **kwargs):
        return self.model.loss(*batch, **kwargs)


def train(data_dir, out_dir, config_path=None, resume=False, epochs=None, progress=True,
          train_manifest=None, dev_manifest=None):
    out = Path(out_dir)
    rank, world = process_group()
    mcfg, tcfg = _configs(out, config_path, resume)
    if epochs is not None:
        tcfg.epochs = epochs
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    for turn in (0, 1):  # rank 0 first: it may compute and write the CMVN the others then read
        if (rank == 0) == (turn == 0):
            train_m, dev_m, cmvn = resolve_data(data_dir, train_manifest, dev_manifest, out)
        if world > 1:
            dist.barrier()
    train_rows = [r for r in read_manifest(train_m) if r["duration"] <= tcfg.max_duration]
    dev_rows = dev_subset(read_manifest(dev_m), tcfg.dev_max_utterances)
    model = ASRModel(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    st = load_state(out, model, opt) if resume else new_progress()
    if rank == 0:
        write_json(out / "config.json", {"model": mcfg.to_dict(), "train": asdict(tcfg),
                                         "train_manifest": str(train_m), "dev_manifest": str(dev_m)})
    run = Run(out, model, opt, cmvn, tcfg, st, progress and rank == 0,
              {"run": str(out), "data_manifests": [str(train_m), str(dev_m)]}, rank, world)
    ds = SpeechDataset(train_rows, cmvn, speeds=tcfg.speeds, specaugment=tcfg.specaugment, seed=tcfg.seed)
    total_steps = len(duration_batches(train_rows, tcfg.batch_seconds)) * tcfg.epochs
    for epoch in range(st["epoch"], tcfg.epochs):
        ds.epoch = epoch
        run.train_epoch(ds, duration_batches(train_rows, tcfg.batch_seconds, seed=tcfg.seed, epoch=epoch),
                        epoch, total_steps)
        run.end_epoch(epoch, dev_rows)
    return st


def new_progress():
    return {"epoch": 0, "batch": 0, "step": 0, "best_wer": None, "history": []}


def load_state_file(path):
    """A run folder's torch state (its own resume state), or a PipelineError naming the file."""
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:  # a truncated or foreign file fails in zipfile or pickle, with many error types
        raise PipelineError(f"{path}: unreadable state file ({type(e).__name__}: {str(e)[:200]}); "
                            f"start a new run folder") from None


def load_state(out, model, opt):
    """Loads a run folder's state.pt into model and optimiser; returns its progress."""
    saved = load_state_file(out / "state.pt")
    model.load_state_dict(saved["model"])
    opt_path = out / saved["optimizer_file"]
    if not opt_path.exists():
        raise PipelineError(f"{opt_path}: optimiser state named by {out / 'state.pt'} is missing")
    opt.load_state_dict(load_state_file(opt_path))
    return saved["progress"]


class Run:
    """The state of one training run and the steps that move it forward."""

    def __init__(self, out, model, opt, cmvn, tcfg, st, progress, provenance, rank=0, world=1, loss=None):
        """Under torchrun (world > 1) each process takes its share of every batch, DDP averages the
        gradients, and rank 0 alone evaluates and writes. `loss`: a module with the model's loss
        signature to train with instead (fine-tuning's distillation)."""
        self.out, self.model, self.opt, self.cmvn, self.tcfg = out, model, opt, cmvn, tcfg
        self.st, self.progress, self.provenance = st, progress, provenance
        self.rank, self.world = rank, world
        self.loss = loss or _Loss(model)
        if world > 1:
            # The decoder sits out the CTC-only steps: its parameters then get no gradient.
            self.loss = torch.nn.parallel.DistributedDataParallel(self.loss, find_unused_parameters=True)

    def save_state(self):
        """The optimiser goes to its own file named by the step (each file stays well under 50 MB,
        so a run can be committed); state.pt names it and is written last, so a kill between the two
        writes leaves the previous pair whole."""
        if self.rank != 0:
            return
        opt_name = f"optimizer-{self.st['step']:07d}.pt"
        with atomic_path(self.out / opt_name) as tmp:
            torch.save(self.opt.state_dict(), tmp)
        with atomic_path(self.out / "state.pt") as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer_file": opt_name, "progress": self.st}, tmp)
        for old in self.out.glob("optimizer-*.pt"):
            if old.name != opt_name:
                old.unlink()

    def train_epoch(self, ds, batches, epoch, total_steps):
        st, tcfg, model, opt = self.st, self.tcfg, self.model, self.opt
        model.train()
        bar = tqdm(total=len(batches), initial=st["batch"], desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                   unit="batch", disable=not self.progress)
        t0, utts = time.time(), 0
        try:  # the bar ends its line before any error is printed
            for bi in range(st["batch"], len(batches)):
                loss, parts = self._step(ds, batches[bi], total_steps)
                st["batch"] = bi + 1
                utts += len(batches[bi])
                bar.set_postfix(loss=f"{loss:.3f}", ctc=f"{parts['ctc']:.2f}", att=f"{parts['att']:.2f}",
                                utt_s=f"{utts / (time.time() - t0):.1f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
                bar.update(1)
                if st["step"] % tcfg.save_every_steps == 0:
                    self.save_state()
        finally:
            bar.close()
        st["seconds"] = st.get("seconds", 0.0) + time.time() - t0

    def _step(self, ds, batch, total_steps):
        """One optimiser step on this process's share of a batch; returns (loss, parts)."""
        st, tcfg, opt = self.st, self.tcfg, self.opt
        share = batch[self.rank::self.world] if len(batch) >= self.world else batch
        feats, lengths, targets, tlens = collate([ds[i] for i in share])
        for g in opt.param_groups:
            g["lr"] = lr_at(st["step"], total_steps, tcfg)
        torch.manual_seed(tcfg.seed * 1_000_003 + st["step"])  # dropout: exact on resume
        loss, parts = self.loss(feats, lengths, targets, tlens, label_smoothing=tcfg.label_smoothing,
                                ctc_only=st["step"] < tcfg.ctc_only_until)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip)):
            opt.step()
        st["step"] += 1
        sums = st.setdefault("loss_sums", {"ctc": 0.0, "att": 0.0, "ctc_n": 0, "att_n": 0})
        for k in ("ctc", "att"):
            if math.isfinite(parts[k]):
                sums[k], sums[f"{k}_n"] = sums[k] + parts[k], sums[f"{k}_n"] + 1
        return loss.item(), parts

    def end_epoch(self, epoch, dev_rows):
        if self.rank == 0:
            self._score_and_save(epoch, dev_rows)
        self.st["epoch"], self.st["batch"] = epoch + 1, 0
        if self.world > 1:
            dist.barrier()

    def _score_and_save(self, epoch, dev_rows):
        st = self.st
        metrics, _ = evaluate(self.model, self.cmvn, dev_rows, progress=self.progress)
        sums = st.pop("loss_sums", {})
        means = {f"train_{k}": sums[k] / sums[f"{k}_n"] for k in ("ctc", "att") if sums.get(f"{k}_n")}
        st["history"].append({"epoch": epoch + 1, "step": st["step"], "dev_wer": metrics["wer"],
                              "dev_cer": metrics["cer"], **means, "train_seconds": round(st.get("seconds", 0.0)),
                              "time": time.time()})
        st["epoch"], st["batch"] = epoch + 1, 0
        print(f"epoch {epoch + 1}: dev WER {metrics['wer']:.3f} CER {metrics['cer']:.3f} "
              f"({metrics['utterances']} utterances)", flush=True)
        scores = {"dev_wer": metrics["wer"], "epoch": epoch + 1}
        save_checkpoint(self.out / "last.safetensors", self.model, self.cmvn, self.provenance, scores)
        if st["best_wer"] is None or metrics["wer"] < st["best_wer"]:
            st["best_wer"] = metrics["wer"]
            save_checkpoint(self.out / "best.safetensors", self.model, self.cmvn, self.provenance, scores)
        write_text(self.out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in st["history"]))
        self.save_state()
