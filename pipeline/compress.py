"""`python -m pipeline compress`: search, fine-tune, search again (Interspeech 2020), then export,
benchmark, score and report.

Iteration k of K searches the current model toward the intermediate target X^(k/K) (relative to the
dense baseline; ranks only shrink), fine-tunes the best policy on `train`, and scores it on the full
`dev`. It stops early, and says so, when dev WER rises past (1 + tolerance) x the baseline's.

Run folder: `config.json`; `baseline_dev.json`; `iter-<k>/search/` (a search run), `iter-<k>/finetune/`
(its state and `model.safetensors`), `iter-<k>/dev.json`; then `final.safetensors`, `export/` (ONNX,
int8, .ort), `native/model.lrkm` (the whole model, for `lowrank_bench --model`, or `--weights` for its
encoder stack, on a device), `scores.json` (WER per split), `bench.json` (latency per runtime),
`report.md` and its plots. Every stage leaves its result file last and is skipped when that file is
there; the stages inside (search, fine-tuning) resume themselves, so `--resume` redoes nothing.
"""
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from export.native import write_model
from export.onnx_export import export
from pipeline.atomic import atomic_path, read_json, write_json
from pipeline.bench import bench, side_by_side
from pipeline.data.manifest import evenly_spaced, read_manifest
from pipeline.errors import PipelineError
from pipeline.finetune import cached_scores, finetune
from pipeline.latency.targets import parse_target
from pipeline.lowrank.checkpoint import load_checkpoint, sha256
from pipeline.report import write_report
from pipeline.search.run import SearchConfig, search
from pipeline.search.subset import stratified, write_subset
from pipeline.train import process_group

DEFAULT_TARGET = 5.0  # compression of the searched weights when no target is given


@dataclass
class CompressConfig:
    target_compression: float | None = None
    target_speedup: float | None = None
    iterations: int = 3
    episodes: int = 30            # per search
    agent: str = "ddpg"
    finetune_steps: int = 80      # per iteration
    dev_utterances: int = 300     # evenly spaced dev utterances scored per iteration (0: all)
    score_utterances: int = 200   # ... per split for the final scores (0: all)
    finetune_lr: float = 3e-4
    distill: float = 0.0          # weight of distillation from the uncompressed model in fine-tuning
    tolerance: float = 0.05       # stop when dev WER > (1 + tolerance) x the baseline's
    device: str = "local"         # bench target for the latency cost and the final benchmark
    threads: int = 2
    seed: int = 0
    bench_utterances: int = 10

    def validate(self):
        if self.target_compression is not None and self.target_speedup is not None:
            raise PipelineError("give one of --target-compression X and --target-speedup X, not both")
        if self.target_compression is None and self.target_speedup is None:
            self.target_compression = DEFAULT_TARGET
        if self.iterations < 1 or self.finetune_steps < 0 or self.episodes < 1:
            raise PipelineError("--iterations and --episodes must be at least 1, --finetune-steps at least 0")
        if not 0.0 <= self.distill <= 1.0:
            raise PipelineError(f"--distill {self.distill}: a weight between 0 and 1")
        return self

    @property
    def target(self):
        return self.target_compression or self.target_speedup


def _check_config(out, want, resume):
    path = out / "config.json"
    if path.exists():
        if not resume:
            raise PipelineError(f"{out}: holds a compress run already; pass --resume or choose another --out")
        have = read_json(path)
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise PipelineError(f"{path}: field(s) {', '.join(diff)} differ from this run's; start a new --out")
    elif resume:
        raise PipelineError(f"{path}: nothing to resume")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, want)


def _subset(data, out):
    """The search's subset: the corpus's checked one if there is one, else a stratified 12% of dev."""
    checked = Path(data) / "dev_subset.jsonl"
    if checked.exists():
        return checked
    path = out / "dev_subset.jsonl"
    if not path.exists():
        write_subset(path, stratified(read_manifest(Path(data) / "dev.jsonl"), 0.12))
    return path


def compress(model_path, data, out, cfg, resume=False, progress=True, log=print, ray=None, workers=None):
    """Runs (or resumes) a compression run; returns finalize's result. Under torchrun every rank
    fine-tunes its share of each batch (DDP); rank 0 alone searches (on Ray with `ray`/`workers`, as
    `search` does), scores and writes, and the other ranks return None."""
    rank, world = process_group()
    cfg, out, data = cfg.validate(), Path(out), Path(data)
    train_rows = read_manifest(data / "train.jsonl")
    if rank == 0:
        _check_config(out, {"compress": asdict(cfg), "model_sha256": sha256(model_path), "data": str(data)}, resume)
        dev_rows = evenly_spaced(read_manifest(data / "dev.jsonl"), cfg.dev_utterances)
        subset = _subset(data, out)
        base = cached_scores(out / "baseline_dev.json", model_path, dev_rows, cfg.threads)
        log(f"baseline: dev WER {base['wer']:.4f}")
    current, history, stopped = Path(model_path), [], None
    for k in range(cfg.iterations):
        step_target = cfg.target ** ((k + 1) / cfg.iterations)
        it = out / f"iter-{k + 1}"
        if rank == 0:
            key = "target_compression" if cfg.target_compression else "target_speedup"
            scfg = SearchConfig(**{key: step_target}, agent=cfg.agent, episodes=cfg.episodes, device=cfg.device,
                                seed=cfg.seed + k)
            result = search(current, it / "search", scfg, subset, resume=(it / "search" / "state.pt").exists(),
                            progress=progress, ray=ray, workers=workers)
        _barrier(world)
        tuned = it / "finetune" / "model.safetensors"
        if not tuned.exists():
            _finetune(it, model_path, train_rows, cfg, k, rank, world, progress)
        _barrier(world)
        if rank == 0:
            dev = cached_scores(it / "dev.json", tuned, dev_rows, cfg.threads)
            row = {"iteration": k + 1, "target": step_target, "cost_ratio": result["best"]["cost_ratio"],
                   "subset_wer_before_finetune": result["best"]["wer"], "dev_wer": dev["wer"],
                   "dev_cer": dev["cer"], "checkpoint": str(tuned)}
            history.append(row)
            log(f"iteration {k + 1}: {step_target:.2f}x, subset WER {row['subset_wer_before_finetune']:.4f} after "
                f"the search, dev WER {dev['wer']:.4f} after fine-tuning")
            if dev["wer"] > base["wer"] * (1 + cfg.tolerance):
                stopped = (f"stopped after iteration {k + 1}: dev WER {dev['wer']:.4f} is past "
                           f"{1 + cfg.tolerance:.2f}x the baseline's {base['wer']:.4f}")
                log(stopped)
        if _shared(stopped, world):
            break
        current = tuned
    if rank != 0:
        return None
    final_from = next((h["iteration"] for h in history if Path(h["checkpoint"]) == current), None)
    write_json(out / "iterations.json", {"history": history, "stopped": stopped, "final_from": final_from})
    final = out / "final.safetensors"
    if not final.exists():
        with atomic_path(final) as tmp:
            shutil.copyfile(current, tmp)
    return finalize(out, final, Path(model_path), data, cfg, history, base, stopped, log)


def _finetune(it, model_path, train_rows, cfg, k, rank, world, progress):
    model, cmvn, header = load_checkpoint(it / "search" / "best.safetensors")
    teacher = load_checkpoint(model_path)[0] if cfg.distill else None
    finetune(model, cmvn, train_rows, it / "finetune", cfg.finetune_steps, cfg.finetune_lr, threads=cfg.threads,
             seed=cfg.seed + k, progress=progress and rank == 0, teacher=teacher, distill=cfg.distill,
             provenance={**header.get("provenance", {}), "finetune_steps": cfg.finetune_steps},
             rank=rank, world=world)


def _barrier(world):
    if world > 1:
        torch.distributed.barrier()


def _shared(value, world):
    """Rank 0's value on every rank."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def finalize(out, final, baseline, data, cfg, history, base, stopped, log):
    """Scores, exports, benchmarks and the report of the final model."""
    scores = out / "scores.json"
    if not scores.exists():
        s = {}
        for split in ("dev", "test", "test_real"):
            manifest = data / f"{split}.jsonl"
            if manifest.exists():
                rows = evenly_spaced(read_manifest(manifest), cfg.score_utterances)
                s[split] = {"baseline": cached_scores(out / f"score_baseline_{split}.json", baseline, rows, cfg.threads),
                            "final": cached_scores(out / f"score_final_{split}.json", final, rows, cfg.threads)}
        write_json(scores, s)
    if not (out / "export" / "model.json").exists():
        export(final, out / "export", int8=True, ort_format=True, log=lambda *_: None)
    native = out / "native"
    if not (native / "model.lrkm").exists():
        model, cmvn, _ = load_checkpoint(final)
        native.mkdir(parents=True, exist_ok=True)
        write_model(native / "model.lrkm", model, cmvn)
    bench_path = out / "bench.json"
    if not bench_path.exists():
        runs = [("torch", baseline, "dense (PyTorch)"), ("native", baseline, "dense (native)"),
                ("torch", final, "compressed (PyTorch)"), ("native", final, "compressed (native)"),
                ("onnx", final, "compressed (onnxruntime)")]
        log("benchmark: " + ", ".join(label for _, _, label in runs))
        if parse_target(cfg.device).kind == "local":
            results = side_by_side([(rt, ckpt) for rt, ckpt, _ in runs], data / "dev.jsonl", 1, cfg.bench_utterances,
                                   reps=3)
        else:
            results = [bench(ckpt, data / "dev.jsonl", rt, cfg.device if rt == "native" else "local", 1,
                             cfg.bench_utterances, reps=3) for rt, ckpt, _ in runs]
        rows = [{"label": label, **{k: v for k, v in r.items() if k != "transcripts"}}
                for (_, _, label), r in zip(runs, results)]
        write_json(bench_path, {"threads": 1, "runs": rows})
    final_from = read_json(out / "iterations.json")["final_from"]
    report = write_report(out, read_json(scores), read_json(bench_path), history, base,
                          stopped, cfg, final_from)
    log(f"report: {report}")
    return {"history": history, "stopped": stopped, "scores": read_json(scores),
            "bench": read_json(bench_path), "final": str(final), "final_from": final_from}
