"""`python -m pipeline compress` and `compress(task, ...)`: search, fine-tune, search again
(Interspeech 2020), then score, export, benchmark and report, for any task (pipeline/task.py).

Iteration k of K searches the current model toward the intermediate target X^(k/K) (relative to the
dense baseline; ranks only shrink), cuts it to the best policy (whitened factorisation by default),
optionally recovers each factored module layer-wise (pipeline/lowrank/recovery.py), fine-tunes it
with the task's `finetune`, and scores it with its `evaluate` after each of these stages; it keeps
the best stage. It stops early, and says so, when the metric rises past (1 + tolerance) x the
baseline's.

Run folder: `config.json`; `baseline_dev.json` (the baseline's `evaluate`); `iter-<k>/search/` (a
search run), `iter-<k>/cut.json` (`evaluate` right after the cut), `iter-<k>/recovered.safetensors`,
`recovery.json` and `recovered.json` (with --recover-steps), `iter-<k>/finetune/` (the task's own
state and `model.safetensors`), `iter-<k>/dev.json`;
then `final.safetensors`, `scores.json` (metrics per split), `export/` (ONNX fp32, int8, .ort, and
`done.json` with the parity figures), `native/model.lrkm` (the LSTM stacks the C++ runtime runs; the
whole recogniser for the built-in task) and `native/model.int8.lrkm` (the same in int8: with
--precision int8, and always for the recogniser), `bench.json` (latency per runtime), `report.md` and its
plots. Every stage leaves its result file last and is skipped when that file is there; the stages
inside (search, the recogniser's fine-tuning) resume themselves, so `--resume` redoes nothing.
"""
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from export.generic import (
    export_onnx,
    native_ms,
    native_parity,
    native_stacks,
    onnx_ms,
    stack_onnx_ms,
    time_ms,
    write_native,
)
from export.native import Precision
from pipeline.atomic import read_json, write_json
from pipeline.errors import PipelineError
from pipeline.latency.table import PRECISIONS
from pipeline.lowrank.recovery import recover
from pipeline.report import write_report
from pipeline.search.run import SearchConfig, search
from pipeline.task import (
    calibration_run,
    check_inputs,
    fingerprint,
    load_factored,
    measure,
    run_finetune,
    save_factored,
)
from pipeline.train import process_group

DEFAULT_TARGET = 3.1  # compression of the searched weights when no target is given


@dataclass
class CompressConfig:
    target_compression: float | None = None
    target_speedup: float | None = None
    iterations: int = 1
    episodes: int = 200           # per search
    agent: str = "ddpg"
    method: str = "whitened"      # factorisation: "svd", or "whitened" by the calibration run's statistics
    recover_steps: int = 0        # layer-wise recovery steps per factored module before fine-tuning (0: off)
    finetune_steps: int = 300     # per iteration
    tolerance: float = 0.05       # stop when the metric > (1 + tolerance) x the baseline's
    device: str = "local"         # bench target for the latency cost and the final benchmark
    precision: str = "fp32"       # int8: search with int8 latency, and export and benchmark int8 too
    threads: int = 2              # for the search's evaluations
    seed: int = 0

    def validate(self):
        if self.target_compression is not None and self.target_speedup is not None:
            raise PipelineError("give one of --target-compression X and --target-speedup X, not both")
        if self.target_compression is None and self.target_speedup is None:
            self.target_compression = DEFAULT_TARGET
        if self.precision not in PRECISIONS:
            raise PipelineError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.iterations < 1 or self.finetune_steps < 0 or self.episodes < 1 or self.recover_steps < 0:
            raise PipelineError("--iterations and --episodes must be at least 1, --finetune-steps and "
                                "--recover-steps at least 0")
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
        return
    if resume:
        raise PipelineError(f"{path}: nothing to resume")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, want)


def _cached(path, fn):
    """fn()'s JSON result, from `path` when an earlier run left it there."""
    if path.exists():
        return read_json(path)
    value = fn()
    write_json(path, value)
    return value


def _save(task, path, model, meta):
    (task.save or save_factored)(path, model, meta)


def _load(task, path):
    return task.load(path) if task.load else load_factored(path, task.model)


def compress(task, out, cfg, resume=False, progress=True, log=print, ray=None, workers=None):
    """Runs (or resumes) a compression run of a task (pipeline/task.py); returns finalize's result.
    Under torchrun every rank fine-tunes (the task's finetune splits the batches); rank 0 alone
    searches (on Ray with `ray`/`workers`), scores and writes, and the other ranks return None."""
    rank, world = process_group()
    cfg, out, baseline = cfg.validate(), Path(out), task.model.eval()
    torch.set_num_threads(cfg.threads)
    if rank == 0:
        task.layers()  # a selection that matches nothing fails here, before anything is written
        if task.example_inputs or task.export is None:
            check_inputs(task, baseline)
        _check_config(out, {"compress": asdict(cfg), "task": task.name, "model_sha256": fingerprint(baseline),
                            **task.extra}, resume)
        base = _cached(out / "baseline_dev.json", lambda: measure(task, "evaluate", task.evaluate, baseline))
        log(f"baseline: {task.metric} {base['metric']:.4f}")
    current, current_path, history, stopped = baseline, None, [], None
    for k in range(cfg.iterations):
        step_target = cfg.target ** ((k + 1) / cfg.iterations)
        it = out / f"iter-{k + 1}"
        tuned = it / "finetune" / "model.safetensors"
        if rank == 0 and tuned.exists():  # the iteration is done: its search's result is on disk
            result = read_json(it / "search" / "best.json")
        elif rank == 0:
            key = "target_compression" if cfg.target_compression else "target_speedup"
            scfg = SearchConfig(**{key: step_target}, agent=cfg.agent, episodes=cfg.episodes, device=cfg.device,
                                method=cfg.method, precision=cfg.precision, seed=cfg.seed + k)
            result = search(replace(task, model=current), it / "search", scfg,
                            resume=(it / "search" / "state.pt").exists(), progress=progress, ray=ray, workers=workers)
        _barrier(world)
        if not tuned.exists():
            model = _recovered(task, current, it, cfg, k, rank, world, progress)
            if task.finetune is not None and cfg.finetune_steps:
                run_finetune(task, model.train(), cfg.finetune_steps, it / "finetune", k)
            if rank == 0:
                _save(task, tuned, model.eval(), {"provenance": {"search_run": str(it / "search"),
                                                                  "recover_steps": cfg.recover_steps,
                                                                  "finetune_steps": cfg.finetune_steps}})
        _barrier(world)
        model = _load(task, tuned)
        kept = tuned
        if rank == 0:
            dev = _cached(it / "dev.json", lambda: measure(task, "evaluate", task.evaluate, model))
            stages = _stage_metrics(it)
            metric, kept = _best_stage(it, tuned, stages, dev["metric"])
            row = {"iteration": k + 1, "target": step_target, "cost_ratio": result["best"]["cost_ratio"],
                   "subset_metric_before_finetune": result["best"]["metric"], **stages,
                   "metric_after_finetune": dev["metric"], "metric": metric, "kept": _STAGES[kept.name],
                   "scores": dev, "checkpoint": str(kept)}
            history.append(row)
            tuned_by = "after fine-tuning" if task.finetune is not None and cfg.finetune_steps else "(no fine-tuning)"
            log(f"iteration {k + 1}: {step_target:.2f}x, subset {task.metric} "
                f"{row['subset_metric_before_finetune']:.4f} after the search, {dev['metric']:.4f} {tuned_by}" +
                (f"; kept the model {row['kept']} ({metric:.4f})" if kept != tuned else ""))
            if metric > base["metric"] * (1 + cfg.tolerance):
                stopped = (f"stopped after iteration {k + 1}: {task.metric} {metric:.4f} is past "
                           f"{1 + cfg.tolerance:.2f}x the baseline's {base['metric']:.4f}")
                log(stopped)
        kept = _shared(kept, world)
        if kept != tuned:  # the iteration's model: searched next
            model = _load(task, kept)
        if _shared(stopped, world):
            break
        current_path, current = kept, model
    if rank != 0:
        return None
    final_from = next((h["iteration"] for h in history if Path(h["checkpoint"]) == current_path), None)
    write_json(out / "iterations.json", {"history": history, "stopped": stopped, "final_from": final_from})
    final = out / "final.safetensors"
    if not final.exists():
        _save(task, final, current, {"provenance": {"final_from": final_from}})
    return finalize(task, out, final, cfg, history, base, stopped, log)


def _recovered(task, teacher, it, cfg, k, rank, world, progress):
    """The iteration's search result after the cut and, with recover_steps, after layer-wise recovery
    toward `teacher` (the model the search cut); rank 0 scores both stages (cut.json, recovered.json)."""
    cut = _load(task, it / "search" / "best.safetensors")
    if rank == 0:
        _cached(it / "cut.json", lambda: measure(task, "evaluate", task.evaluate, cut))
    if not cfg.recover_steps:
        return cut
    path = it / "recovered.safetensors"
    if rank == 0 and not path.exists():
        report = recover(teacher, cut, calibration_run(task), cfg.recover_steps, seed=cfg.seed + k, progress=progress)
        write_json(it / "recovery.json", report)
        _save(task, path, cut.eval(), {"provenance": {"search_run": str(it / "search"),
                                                      "recover_steps": cfg.recover_steps}})
    _barrier(world)
    model = _load(task, path)
    if rank == 0:
        _cached(it / "recovered.json", lambda: measure(task, "evaluate", task.evaluate, model))
    return model


_STAGES = {"best.safetensors": "after the cut", "recovered.safetensors": "after recovery",
           "model.safetensors": "after fine-tuning"}


def _best_stage(it, tuned, stages, tuned_metric):
    """(metric, checkpoint) of the iteration's best stage: where recovery or fine-tuning made the
    metric worse than the stage before, that stage is undone."""
    best = (tuned_metric, tuned)
    for metric, path in ((stages["metric_after_cut"], it / "search" / "best.safetensors"),
                         (stages["metric_after_recovery"], it / "recovered.safetensors")):
        if metric is not None and metric < best[0]:
            best = (metric, path)
    return best


def _stage_metrics(it):
    """The metric after the cut and after recovery (None where that stage did not run)."""
    return {f"metric_after_{stage}": read_json(it / f"{name}.json")["metric"] if (it / f"{name}.json").exists() else None
            for stage, name in (("cut", "cut"), ("recovery", "recovered"))}


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


def finalize(task, out, final, cfg, history, base, stopped, log):
    """Scores, exports, benchmarks and the report of the final model."""
    baseline, model = task.model.eval(), _load(task, final)
    scores_of = task.scores or (lambda m: {"evaluate": measure(task, "evaluate", task.evaluate, m)})
    scores = _cached(out / "scores.json", lambda: _splits(scores_of(baseline), scores_of(model)))
    if not (out / "export" / "done.json").exists():
        done = task.export(final, out) if task.export is not None else _export(task, model, out, cfg.precision)
        write_json(out / "export" / "done.json", done or {})
    bench_path = out / "bench.json"
    if not bench_path.exists():
        if task.benchmark is not None:
            bench = task.benchmark(final, out, cfg)
        else:
            bench = _benchmark(task, baseline, model, out, cfg.precision)
        write_json(bench_path, bench)
    final_from = read_json(out / "iterations.json")["final_from"]
    report = write_report(out, task.metric, scores, read_json(bench_path), history, base,
                          stopped, cfg, final_from)
    log(f"report: {report}")
    return {"history": history, "stopped": stopped, "scores": scores,
            "bench": read_json(bench_path), "final": str(final), "final_from": final_from}


def _splits(baseline, final):
    return {split: {"baseline": baseline[split], "final": final[split]} for split in baseline}


def _export(task, model, out, precision="fp32"):
    """ONNX (fp32, int8, .ort) from the example inputs, and the native stacks (in int8 too, if asked)."""
    onnx = export_onnx(model, task.example_inputs, out / "export", model_id=fingerprint(model)[:16])
    stacks = write_native(out / "native" / "model.lrkm", model)
    if precision == "int8":
        write_native(out / "native" / "model.int8.lrkm", model, Precision(True))
    return {**onnx, "native_stacks": stacks, "native_parity": native_parity(model)}


def _benchmark(task, baseline, model, out, precision="fp32", reps=30):
    """PyTorch and onnxruntime (fp32, int8) on the example inputs, and the native LSTM stacks on 100
    frames (in int8 too, if asked), dense against compressed, side by side in one process, 1 thread."""
    torch.set_num_threads(1)
    dense_onnx = export_onnx(baseline, task.example_inputs, out / "export" / "dense", ort_format=False,
                             model_id=fingerprint(baseline)[:16])["files"]
    runs = []

    def row(label, timing):
        med, times = timing
        runs.append({"label": label, "median_ms": med, "p90_ms": float(np.percentile(times, 90)), "pass_ms": times})

    for name, m, folder, files in (("dense", baseline, out / "export" / "dense", dense_onnx),
                                   ("compressed", model, out / "export", {"fp32": "model.onnx", "int8": "model.int8.onnx"})):
        with torch.no_grad():
            row(f"{name} (PyTorch)", time_ms(lambda: m(*task.example_inputs), reps))
        row(f"{name} (onnxruntime)", onnx_ms(folder / files["fp32"], task.example_inputs, reps))
        row(f"{name} (onnxruntime int8)", onnx_ms(folder / files["int8"], task.example_inputs, reps))
        stacks = list(native_stacks(m).values())
        if stacks:  # the same 100 frames through each runtime
            row(f"{name} LSTM stacks (native, 100 frames)", _total([native_ms(s, reps=reps) for s in stacks]))
            if precision == "int8":
                row(f"{name} LSTM stacks (native int8, 100 frames)",
                    _total([native_ms(s, reps=reps, precision=Precision(True)) for s in stacks]))
            row(f"{name} LSTM stacks (onnxruntime, 100 frames)",
                _total([stack_onnx_ms(s, out / "export" / "stacks" / f"{name}-{i}", reps=reps) for i, s in enumerate(stacks)]))
    return {"threads": 1, "reference": "dense (onnxruntime)", "runs": runs}


def _total(timings):
    """(median, per-pass times) of several timings run one after the other."""
    return sum(t[0] for t in timings), [sum(p) for p in zip(*(t[1] for t in timings))]
