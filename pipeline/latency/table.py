"""The latency table: microseconds per encoder frame of each encoder LSTM cell shape at each pair of
ranks of a grid (input matrix, recurrent matrix: multiples of 32 and the full rank; dense included),
measured on a target with the native kernel (`lowrank_bench`, whole-utterance mode, one thread), or
on this machine with onnxruntime (one thread, each cell in its faster lowering). It predicts a whole encoder's
latency as the sum of its cells, interpolating linearly between grid ranks.

With the native kernel it also holds the decoder's LSTM cells measured one step at a time
(`lowrank_bench --mode stream`: the input projection is a matrix-vector product there too), so that
a search can count the decoder's LSTM at its share of the end-to-end time: microseconds per output
step times output steps per encoder frame (`predict(model, steps_per_frame)`). That part is not
calibrated: a decoder's LSTM runs one cell per step, as measured.

A stack runs ~10% faster than the sum of its cells measured one by one (measured here), so the
table also holds, per stack shape, a calibration: the ratio of measured to summed latency of three
random rank policies of the model (drawn from a seed of their own, so validation never sees them),
which scales predictions.

Each point is the lowest of RUNS run medians taken in separate passes over the whole grid: on this
VM a process runs for seconds at a time in a slow mode (up to 1.5x), so repeats taken back to back
share it while repeats spread over the grid do not.

With precision "int8" every point and stack is timed with its weight matrices in int8 (the native
kernels only: `lowrank_bench --precision int8`).

Cached on disk as JSON, keyed by target, runtime, precision and kernel version; a run killed while
measuring resumes where it stopped.
"""
import copy
import math
import random
from pathlib import Path

from torch import nn
from tqdm import tqdm

from export.generic import native_stacks
from export.native import write_stack
from export.onnx_export import lowering_seconds, stack_seconds
from pipeline.atomic import read_json, write_json
from pipeline.data.features import FeatureConfig
from pipeline.errors import PipelineError
from pipeline.latency.targets import CACHE, Runner, kernel_version, parse_target, temp_weights_path
from pipeline.lowrank.factorize import SNAP, factorize, layers
from pipeline.lowrank.modules import cell_name

STEP = 32   # grid ranks: multiples of the widest kernel panel (32 rows with AVX-512), where costs step
DENSE = 0
RUNS = 3
UTTERANCE, STREAM = "utterance", "stream"  # how a cell runs: encoder (all frames at once) or decoder (per step)
CALIBRATION_POLICIES, CALIBRATION_SEED = 3, 1_000_003  # validate() draws its policies from other seeds


def grid(limit):
    """Ranks measured for a matrix whose rank is at most `limit`: multiples of STEP and the limit itself,
    and 0 for dense. Between them the kernels' cost is close to linear in the rank."""
    return [DENSE] + sorted({*range(STEP, limit + 1, STEP), limit})


def encoder_cells(model):
    """[(cell, input size, hidden)] of the encoder's LSTM cells in stack order; a cell's matrices are
    the layers `cell`.ih and `cell`.hh."""
    return [(f"encoder.lstms.{i}.{d}.l0", mod.input_size, mod.hidden_size)
            for i, layer in enumerate(model.encoder.lstms) for d, mod in layer.items()]


def decoder_cells(model):
    """The decoder's LSTM cells, as encoder_cells gives the encoder's."""
    lstm = model.decoder.lstm
    return [(f"decoder.lstm.l{i}", lstm.input_size if i == 0 else lstm.hidden_size, lstm.hidden_size)
            for i in range(lstm.num_layers)]


def table_stacks(model):
    """{module path: module} of the LSTM stacks of any model that the native table measures: those the
    native kernels run, without projections."""
    return {path: mod for path, mod in native_stacks(model).items() if not getattr(mod, "proj_size", 0)}


def lstm_cells(model):
    """[(cell, input size, hidden)] of the cells of table_stacks(model), in module order (for the
    recogniser: its encoder's cells, then its decoder's)."""
    out = []
    for path, mod in table_stacks(model).items():
        dirs = 2 if mod.bidirectional else 1
        for layer in range(mod.num_layers):
            inp = mod.input_size if layer == 0 else mod.hidden_size * dirs
            out += [(f"{path}.{cell_name(layer, d)}", inp, mod.hidden_size) for d in range(dirs)]
    return out


def at_ranks(cells, ranks):
    """[(input size, hidden, rank_ih, rank_hh)] of `cells` at `ranks` ({layer name: rank, None: dense});
    rank 0 = dense, as the table keys it."""
    return [(inp, h, ranks[f"{n}.ih"] or DENSE, ranks[f"{n}.hh"] or DENSE) for n, inp, h in cells]


def _ranks(model):
    return {l.name: l.rank for l in layers(model)}


def steps_per_frame(rows, cfg):
    """Decoder steps (characters and the end token) per encoder frame over manifest rows (with text
    and duration): how many times the decoder's LSTM runs for each frame the encoder's runs."""
    frames = sum(r["duration"] for r in rows) * 1000.0 / FeatureConfig().frame_shift_ms / cfg.subsampling
    if frames <= 0:
        raise PipelineError("steps per frame: the manifest holds no audio")
    return sum(len(r["text"]) + 1 for r in rows) / frames


PRECISIONS = ("fp32", "int8")


def precision_args(precision):
    """lowrank_bench's arguments for a precision."""
    if precision not in PRECISIONS:
        raise PipelineError(f"precision {precision!r}: choose fp32 or int8")
    return ["--precision", precision]


class LatencyTable:
    def __init__(self, target="local", runtime="native", frames=200, reps=10, cache_dir=None, precision="fp32"):
        self.target = parse_target(target) if isinstance(target, str) else target
        if runtime not in ("native", "onnx"):
            raise PipelineError(f"latency table: runtime {runtime!r}: native or onnx")
        if runtime == "onnx" and self.target.kind != "local":
            raise PipelineError(f"latency table: onnxruntime is measured on this machine only, not {self.target.spec}")
        precision_args(precision)
        if runtime == "onnx" and precision != "fp32":
            raise PipelineError("latency table: int8 latency is measured with the native kernels (--runtime native)")
        self.runtime, self.precision = runtime, precision
        self.frames, self.reps = frames, reps
        kind = runtime if precision == "fp32" else f"{runtime}-{precision}"
        self.path = Path(cache_dir or CACHE / "latency") / f"{self.target.key()}-{kind}-{kernel_version()}.json"
        self.entries, self.calibration = {}, {}
        if self.path.exists():
            self.entries, self.calibration = _read_cache(self.path)
        self._runner = None

    @staticmethod
    def _key(inp, hidden, r_ih, r_hh, mode=UTTERANCE):
        return ("" if mode == UTTERANCE else f"{mode}:") + f"{inp},{hidden},{r_ih},{r_hh}"

    def measure(self, model, progress=True):
        """Measures every grid point of every cell shape of `model` (the decoder's too, with the native
        kernel) not in the cache yet, then the calibration of the model's stack shape; returns how many
        runs it made."""
        shapes = sorted({(inp, h, UTTERANCE) for _, inp, h in encoder_cells(model)})
        if self.runtime == "native":
            shapes += sorted({(inp, h, STREAM) for _, inp, h in decoder_cells(model)})
        done = self.measure_shapes(shapes, progress)
        if _signature(model) in self.calibration:
            return done
        models = calibration_models(model)
        self.set_calibration(models, measured_us(models, self.target, self.frames, self.reps, self.runtime,
                                                 self.precision))
        return done + RUNS * CALIBRATION_POLICIES

    def measure_shapes(self, shapes, progress=True):
        """Measures every grid point of each (input, hidden, mode) cell shape not in the cache yet;
        returns how many runs it made."""
        points = [(inp, h, a, b, mode) for inp, h, mode in shapes for a in grid(min(4 * h, inp)) for b in grid(h)]
        todo = [(p, r) for r in range(RUNS) for p in points if len(self.entries.get(self._key(*p), [])) <= r]
        kind = self.runtime + ("" if self.precision == "fp32" else f" {self.precision}")
        for p, _ in tqdm(todo, desc=f"latency table ({self.target.spec}, {kind})", unit="run",
                         disable=not progress):
            self.entries.setdefault(self._key(*p), []).append(self._point_us(*p))
            self._save()
        return len(todo)

    def set_calibration(self, models, measured):
        """Stores the measured latency of the calibration models (all of one stack shape)."""
        self.calibration[_signature(models[0])] = [{"cells": at_ranks(encoder_cells(m), _ranks(m)), "measured_us": us}
                                                   for m, us in zip(models, measured)]
        self._save()

    def _point_us(self, inp, hidden, r_ih, r_hh, mode):
        """One cell alone: lowrank_bench on synthetic weights, or onnxruntime in its faster lowering."""
        if self.runtime == "onnx":
            return 1e6 * min(lowering_seconds(_cell(inp, hidden, r_ih, r_hh), self.frames).values()) / self.frames
        self._runner = self._runner or Runner(self.target)
        return self._runner.bench(["--synthetic", f"1,1,{inp},{hidden},{r_ih},{r_hh}", "--mode", mode,
                                   "--frames", self.frames, "--reps", self.reps, *precision_args(self.precision)]
                                  )["us_per_frame"]["median"]

    def _save(self):
        write_json(self.path, {"target": self.target.spec, "kernel_version": kernel_version(), "precision": self.precision,
                               "emulated": self.target.emulated, "frames": self.frames, "reps": self.reps,
                               "us_per_frame": self.entries, "calibration": self.calibration})

    def scale(self, model):
        """Measured over summed latency of the calibration policies of the model's stack shape: a
        stack runs ~10% faster than its cells one by one (1.0 before any calibration)."""
        cal = self.calibration.get(_signature(model), [])
        ratios = [c["measured_us"] / sum(self.cell(*cell) for cell in c["cells"]) for c in cal]
        return sum(ratios) / len(ratios) if ratios else 1.0

    def cell(self, inp, hidden, r_ih, r_hh, mode=UTTERANCE):
        """Predicted us per frame (or step) of one cell: exact at grid ranks, linear in each rank between them."""
        def around(r, limit):
            if r == DENSE:
                return [(DENSE, 1.0)]
            pts = grid(limit)[1:]
            if r <= pts[0]:
                return [(pts[0], 1.0)]
            hi = next(p for p in pts if p >= r)
            lo = max(p for p in pts if p <= r)
            if hi == lo:
                return [(lo, 1.0)]
            w = (r - lo) / (hi - lo)
            return [(lo, 1 - w), (hi, w)]
        total = 0.0
        for a, wa in around(r_ih, min(4 * hidden, inp)):
            for b, wb in around(r_hh, hidden):
                key = self._key(inp, hidden, a, b, mode)
                if not self.entries.get(key):
                    raise PipelineError(f"{self.path}: no entry {key}; run `python -m pipeline latency table` first")
                total += wa * wb * min(self.entries[key])
        return total

    def lstm_us(self, enc, dec, scale, steps_per_frame):
        """us per encoder frame of encoder cells `enc` and decoder cells `dec`, each (input, hidden,
        rank_ih, rank_hh): the encoder's sum times `scale`, plus `steps_per_frame` decoder steps."""
        enc_us = scale * sum(self.cell(*c) for c in enc)
        if not steps_per_frame:  # the decoder's cells are not looked up: an onnxruntime table has none
            return enc_us
        return enc_us + steps_per_frame * sum(self.cell(*c, STREAM) for c in dec)

    def predict(self, model, steps_per_frame=0.0):
        """Predicted us per encoder frame of the model's encoder LSTM stack, plus its decoder's LSTM
        at `steps_per_frame` output steps per encoder frame."""
        ranks = _ranks(model)
        return self.lstm_us(at_ranks(encoder_cells(model), ranks), at_ranks(decoder_cells(model), ranks),
                            self.scale(model), steps_per_frame)


def _read_cache(path):
    """(entries, calibration) of a cached table: every entry a list of positive finite microseconds."""
    saved = read_json(path)
    entries, calibration = saved.get("us_per_frame"), saved.get("calibration", {})
    if not isinstance(entries, dict) or not isinstance(calibration, dict):
        raise PipelineError(f"{path}: field 'us_per_frame' or 'calibration' is not an object; delete it to measure again")
    for key, values in entries.items():
        if not (isinstance(values, list) and values and all(
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)):
            raise PipelineError(f"{path}: field 'us_per_frame.{key}' must be a list of positive numbers; "
                                f"delete the file to measure again")
    return entries, calibration


def _signature(model):
    """The encoder's cell shapes, which a calibration is for."""
    return ";".join(f"{inp}x{h}" for _, inp, h in encoder_cells(model))


def _cell(inp, hidden, r_ih, r_hh):
    """A random one-direction LSTM cell factored at the given ranks (0 = dense)."""
    holder = nn.Module()
    holder.lstm = nn.LSTM(inp, hidden, batch_first=True)
    return factorize(holder, {f"lstm.l0.{w}": r for w, r in (("ih", r_ih), ("hh", r_hh)) if r}).lstm.eval()


def _best_of_passes(items, measure):
    """The lowest of RUNS measurements of each item, taken in separate passes over all the items."""
    runs = [[measure(x) for x in items] for _ in range(RUNS)]
    return [min(r[i] for r in runs) for i in range(len(items))]


def measured_us(models, target="local", frames=200, reps=10, runtime="native", precision="fp32"):
    """Measured us per encoder frame of each model's encoder LSTM stack (its real weights) on the target:
    the lowest of RUNS run medians, taken in separate passes over all the models."""
    if runtime == "onnx":
        return _best_of_passes(models, lambda m: 1e6 * stack_seconds(m, frames) / frames)
    runner, paths = Runner(target), [temp_weights_path() for _ in models]
    try:
        for m, path in zip(models, paths):
            write_stack(path, m.encoder)
        return _best_of_passes(paths, lambda p: runner.bench(["--mode", "utterance", "--frames", frames, "--reps",
                                                              reps, *precision_args(precision)],
                                                             weights=p)["us_per_frame"]["median"])
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def random_policy(model, rng, cells=None):
    """Random ranks for every encoder LSTM matrix (or those of `cells`): dense, or any multiple of 8 up
    to its limit."""
    policy = {}
    for name, inp, h in encoder_cells(model) if cells is None else cells:
        for which, limit in (("ih", min(4 * h, inp)), ("hh", h)):
            if rng.random() < 0.15:
                continue  # stays dense
            policy[f"{name}.{which}"] = rng.randrange(SNAP, limit + 1, SNAP)
    return policy


def calibration_models(model):
    """The model factored at the calibration policies (a seed of their own)."""
    rng = random.Random(CALIBRATION_SEED)
    return [factorize(copy.deepcopy(model), random_policy(model, rng)) for _ in range(CALIBRATION_POLICIES)]


def validate(model, table, n_policies=10, seed=0, target="local", log=print):
    """Predicted against measured latency of `n_policies` random rank policies; returns the pairs.
    The calibration policies are measured again in the same interleaved passes as the validation
    policies, so that both see the device at the same speed (this VM drifts by up to 30% within
    minutes, as phones do when they heat); the table keeps that calibration."""
    rng = random.Random(seed)
    policies = [random_policy(model, rng) for _ in range(n_policies)]
    models = [factorize(copy.deepcopy(model), p) for p in policies]
    cal = calibration_models(model)
    both = measured_us(cal + models, target, table.frames, table.reps, table.runtime, table.precision)
    table.set_calibration(cal, both[:len(cal)])
    measured = both[len(cal):]
    pairs = []
    for k, (m, meas) in enumerate(zip(models, measured)):
        pred = table.predict(m)
        pairs.append({"policy": k, "ranks": policies[k], "predicted_us": pred, "measured_us": meas,
                      "error": pred / meas - 1})
        log(f"policy {k}: predicted {pred:8.1f} us/frame, measured {meas:8.1f}, error {100 * (pred / meas - 1):+5.1f}%")
    return pairs


def stacks_us(models, target="local", frames=200, reps=10, precision="fp32"):
    """Measured us per frame of each model's native LSTM stacks without projections, summed (each on
    `frames` frames of its own input): the lowest of RUNS run medians, in passes over all of them."""
    runner, files = Runner(target), []
    try:
        for i, m in enumerate(models):
            for mod in table_stacks(m).values():
                files.append((i, temp_weights_path()))
                write_stack(files[-1][1], mod)
        best = _best_of_passes([p for _, p in files], lambda p: runner.bench(
            ["--mode", "utterance", "--frames", frames, "--reps", reps, *precision_args(precision)],
            weights=p)["us_per_frame"]["median"])
        out = [0.0] * len(models)
        for (i, _), us in zip(files, best):
            out[i] += us
        return out
    finally:
        for _, p in files:
            p.unlink(missing_ok=True)


def validate_stacks(model, table, n_policies=10, seed=0, target="local", log=print):
    """validate() for any model: the table's uncalibrated sum over the cells of its LSTM stacks
    (lstm_cells) against their measured latency, at `n_policies` random rank policies."""
    cells = lstm_cells(model)
    if not cells:
        raise PipelineError("latency validate: the model has no LSTM stack without projections")
    rng = random.Random(seed)
    policies = [random_policy(model, rng, cells) for _ in range(n_policies)]
    models = [factorize(copy.deepcopy(model), p) for p in policies]
    pairs = []
    for k, (m, meas) in enumerate(zip(models, stacks_us(models, target, table.frames, table.reps, table.precision))):
        pred = table.lstm_us(at_ranks(cells, _ranks(m)), [], 1.0, 0.0)
        pairs.append({"policy": k, "ranks": policies[k], "predicted_us": pred, "measured_us": meas,
                      "error": pred / meas - 1})
        log(f"policy {k}: predicted {pred:8.1f} us/frame, measured {meas:8.1f}, error {100 * (pred / meas - 1):+5.1f}%")
    return pairs
