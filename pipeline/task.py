"""Compress your own model: a task is a model plus what the pipeline cannot know about it.

    Task(model, evaluate, example_inputs, evaluate_subset=None, finetune=None, ...)

`evaluate(model)` returns a number, lower is better (WER, bits per character, a distance to the
uncompressed model's outputs), or a dict with that number under "metric" and anything else worth
logging. The search scores its candidates with `evaluate_subset` (default: `evaluate`);
`finetune(model, steps)` trains a factored model in place between searches (optional; it may also
take `workdir=` to keep resumable state there); `calibrate(model)` runs the model on a few hundred
representative inputs, whose statistics make the factorisation data-aware (optional: else the
example inputs); `example_inputs` (a tuple of tensors, as for
torch.onnx.export) drives export, parity checks and latency. `include`, `exclude` (module-path or
layer-name globs) and `types` (PyTorch class names) choose the layers, as NNI's config_list does.

The built-in recogniser is one such task (pipeline/asr_task.py); its hooks `scores`, `save`, `load`,
`export`, `benchmark` and `latency_cost` replace the generic defaults with its own formats, splits
and end-to-end benchmark.
"""
import copy
import hashlib
import importlib
import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError, UserCodeError
from pipeline.lowrank.calibration import calibrate
from pipeline.lowrank.factorize import current_ranks, factorize, parse_rank_spec, select

MAGIC = "lowrank-task-checkpoint"


@dataclass
class Task:
    model: nn.Module
    evaluate: Callable
    example_inputs: tuple = ()
    evaluate_subset: Callable | None = None
    finetune: Callable | None = None
    calibrate: Callable | None = None       # model -> None: runs it on calibration data (default: example_inputs)
    metric: str = "metric"                  # its name in logs and reports, e.g. "WER" or "bits/char"
    include: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    types: Sequence[str] | None = None
    name: str = "model"
    # Hooks with generic defaults (see the module docstring).
    scores: Callable | None = None          # model -> {split: metrics}
    save: Callable | None = None            # (path, model, meta) -> None
    load: Callable | None = None            # path -> model
    export: Callable | None = None          # (final checkpoint, run folder) -> what export/done.json holds
    benchmark: Callable | None = None       # (final checkpoint, run folder, CompressConfig) -> bench.json
    latency_cost: Callable | None = None    # (model, layer_list, search config) -> CostModel
    extra: dict = field(default_factory=dict)

    def layers(self, model=None):
        return select(self.model if model is None else model, self.include, self.exclude, self.types,
                      where=f"task '{self.name}'")


def user_call(task, what, fn, *args, **kwargs):
    """fn(*args, **kwargs); an exception in it becomes a UserCodeError naming the task (a Task or its
    name) and the callable."""
    try:
        return fn(*args, **kwargs)
    except PipelineError:
        raise
    except Exception as e:  # the user's code: any exception is theirs to read, with its traceback
        raise UserCodeError(f"task '{_name(task)}': {what} raised {type(e).__name__}: {e}") from e


def _name(task):
    return task if isinstance(task, str) else task.name


def measure(task, what, fn, model):
    """{"metric": float, ...} of fn(model), checked finite."""
    value = user_call(task, f"{what}(model)", fn, model)
    out = dict(value) if isinstance(value, dict) else {"metric": value}
    m = out.get("metric")
    if isinstance(m, torch.Tensor) and m.numel() == 1:
        m = m.item()
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        raise UserCodeError(f"task '{_name(task)}': {what}(model) returned {type(m).__name__}, not a number "
                            f"(or a dict with one under 'metric')")
    if not math.isfinite(m):
        raise UserCodeError(f"task '{_name(task)}': {what}(model) returned {m}: the metric must be finite")
    out["metric"] = float(m)
    return out


def run_finetune(task, model, steps, workdir, iteration=0):
    """task.finetune(model, steps), with `workdir` (a folder of its own, for resumable state) and
    `iteration` (0, 1, ...) where its signature takes them."""
    fn = task.finetune
    takes = inspect.signature(fn).parameters
    extra = {k: v for k, v in (("workdir", workdir), ("iteration", iteration)) if k in takes}
    user_call(task, "finetune(model, steps)", fn, model, steps, **extra)


def calibration_run(task):
    """run(model): the task's `calibrate(model)`, else the model on its example inputs."""
    if task.calibrate is not None:
        return lambda m: user_call(task, "calibrate(model)", task.calibrate, m)
    if task.example_inputs:
        return lambda m: user_call(task, "the model on example_inputs", m, *task.example_inputs)
    raise PipelineError(f"task '{task.name}': data-aware factorisation and recovery need calibrate or example_inputs")


def task_calibration(task, model, layer_list):
    """The inputs' second moments of `layer_list` (pipeline.lowrank.calibration) while the task's
    calibration run runs `model`."""
    run = calibration_run(task)
    return calibrate(model, layer_list, lambda: run(model))


def check_inputs(task, model):
    """Runs the model on its example inputs once; a clear error where they do not fit it."""
    if not isinstance(task.example_inputs, tuple) or not task.example_inputs:
        raise PipelineError(f"task '{task.name}': example_inputs must be a non-empty tuple of inputs")
    with torch.no_grad():
        user_call(task, "the model on example_inputs", model.eval(), *task.example_inputs)


def load_task(spec, kwargs=None):
    """The Task that `package.module:factory` returns, called with `kwargs`."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise PipelineError(f"--task {spec!r}: expected package.module:factory")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:
        raise PipelineError(f"--task {spec!r}: cannot import {mod_name} ({type(e).__name__}: {e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise PipelineError(f"--task {spec!r}: {mod_name} has no callable {attr!r}")
    task = user_call(spec, f"the factory {spec}", factory, **(kwargs or {}))
    if not isinstance(task, Task):
        raise PipelineError(f"--task {spec!r}: the factory returned {type(task).__name__}, not a pipeline.task.Task")
    return task


def fingerprint(model):
    """sha256 of a model's tensors (names, shapes and bytes): what a resumed run checks."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def save_factored(path, model, meta=None):
    """A factored (or dense) model of any class: its tensors and {"ranks", **meta} in the metadata."""
    header = {"ranks": current_ranks(model), **(meta or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": MAGIC, "header": json.dumps(header)})


def load_factored(path, template):
    """The model saved by save_factored, rebuilt from `template` (a model of the same class, dense or
    not): factorised to the saved ranks, then given the saved tensors."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise PipelineError(f"{path}: not a readable checkpoint ({e})") from None
    if meta.get("format") != MAGIC:
        raise PipelineError(f"{path}: not a task checkpoint (metadata field 'format' is {meta.get('format')!r})")
    try:
        header = json.loads(meta["header"])
        ranks = header["ranks"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: metadata field 'header' is missing, not JSON or has no 'ranks' ({e})") from None
    model = copy.deepcopy(template)
    model = factorize(model, parse_rank_spec(ranks, model, snap=False, where=f"{path}: field 'ranks'",
                                     keep_unprofitable=True), init=False)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise PipelineError(f"{path}: tensors do not fit the model ({str(e).splitlines()[0]})") from None
    return model.eval()
