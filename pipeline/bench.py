"""End-to-end latency of a checkpoint on a fixed set of utterances: features, encoder and greedy
decoding, in PyTorch, in onnxruntime (the exported graphs) or natively (all of it in C++:
`export.native.NativeAsr`); `native-int8` and `onnx-int8` are the last two with the weight matrices
in int8 (the native int8 kernels; onnxruntime's dynamic quantisation). Warm-up, repetitions, median
and p90 per utterance set, real-time factor and the process's peak memory, with the thread count pinned.

On a remote target (ssh, adb, qemu) the whole model runs there natively, through `lowrank_bench
--model` on the model file (`export.native.write_model`) and each utterance's samples.
"""
import math
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export.native import NativeAsr, Precision, write_model
from export.onnx_export import export
from export.runner import OnnxAsr
from pipeline.data.audio import load_audio, resample
from pipeline.data.features import fbank
from pipeline.data.manifest import read_manifest
from pipeline.errors import PipelineError
from pipeline.latency.targets import Runner, parse_target
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.model.decode import greedy


def fixed_utterances(manifest, n):
    """`n` evenly spaced utterances of a manifest: the fixed set every runtime is timed on."""
    rows = read_manifest(manifest)
    step = max(1, math.ceil(len(rows) / n))
    return rows[::step][:n]


def utterance_audio(rows):
    return [load_audio(r["audio_filepath"], allow_multichannel=True) for r in rows]


RUNTIMES = ("native", "native-int8", "onnx", "onnx-int8", "torch")


def _runtime_fn(runtime, checkpoint, model, cmvn):
    """A function (audio, sr) -> transcript for the runtime (one of RUNTIMES)."""
    if runtime == "torch":
        def run(audio, sr):
            f = cmvn(fbank(audio, sr))[None]
            return greedy(model, f, torch.tensor([f.shape[1]]))[0]
        return run
    if runtime in ("native", "native-int8"):
        return NativeAsr(model, cmvn, precision=Precision(runtime == "native-int8")).transcribe
    if runtime in ("onnx", "onnx-int8"):
        out = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
        int8 = runtime == "onnx-int8"
        export(checkpoint, out, int8=int8, log=lambda *_: None)
        asr = OnnxAsr(out, variant="int8" if int8 else "fp32", threads=torch.get_num_threads())
        return lambda audio, sr: asr.transcribe(audio, sr)
    raise PipelineError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")


def bench(checkpoint, manifest, runtime="native", target="local", threads=1, utterances=10, reps=5, warmup=1):
    """{median_ms, p90_ms, rtf, runtime, target, threads, ...} for one pass over the fixed utterance set."""
    t = parse_target(target)
    if t.kind == "local":
        r = side_by_side([(runtime, checkpoint)], manifest, threads, utterances, reps, warmup)[0]
        return {**r, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch.set_num_threads(threads)
    model, cmvn, _ = load_checkpoint(checkpoint)
    audio = utterance_audio(fixed_utterances(manifest, utterances))
    return _remote(model, cmvn, audio, sum(len(a) / sr for a, sr in audio), t, runtime, reps)


def side_by_side(runs, manifest, threads=1, utterances=10, reps=5, warmup=1):
    """`bench` on this machine of several (runtime, checkpoint) pairs, one result each, the pairs taking
    turns utterance by utterance: a slow spell of a shared machine (they last seconds here) then slows
    them all alike, not just the one running at the time (it made a dense baseline timed alone 10% slow).
    Each result keeps its passes' totals (`pass_ms`) for `speedup`."""
    torch.set_num_threads(threads)
    rows = fixed_utterances(manifest, utterances)
    audio = utterance_audio(rows)
    seconds = sum(len(a) / sr for a, sr in audio)
    fns = []
    for runtime, checkpoint in runs:
        model, cmvn, _ = load_checkpoint(checkpoint)
        fns.append(_runtime_fn(runtime, checkpoint, model, cmvn))
    ms = [[] for _ in runs]
    for rep in range(warmup + reps):
        total, hyps = [0.0] * len(runs), [[] for _ in runs]
        for a, sr in audio:
            for i, run in enumerate(fns):
                t0 = time.perf_counter()
                hyps[i].append(run(a, sr))
                total[i] += 1e3 * (time.perf_counter() - t0)
        if rep >= warmup:
            for m, t in zip(ms, total):
                m.append(t)
    return [_summary(statistics.median(m), float(np.percentile(m, 90)), seconds, runtime, "local", threads, rows,
                     reps, False, {"transcripts": h, "pass_ms": m}) for (runtime, _), m, h in zip(runs, ms, hyps)]


def speedup(ref_ms, ms):
    """(median, min, max) of the ratios ref / this over passes timed together: a ratio of medians would
    mix passes from different spells of the machine."""
    ratios = [r / m for r, m in zip(ref_ms, ms, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def row_speedup(ref, row):
    """(speedup, (min, max) or None) of one bench result over another: `speedup` over their passes where
    both kept them (`pass_ms`), else the ratio of medians (a result from before passes were kept, or a
    remote target's)."""
    if "pass_ms" in ref and "pass_ms" in row:
        med, lo, hi = speedup(ref["pass_ms"], row["pass_ms"])
        return med, (lo, hi)
    return ref["median_ms"] / row["median_ms"], None


def _remote(model, cmvn, audio, seconds, t, runtime, reps):
    """The whole model natively on the target (`lowrank_bench --model`), utterance by utterance; the
    set's median and p90 are the sums of the utterances'."""
    if runtime not in ("native", "native-int8"):
        raise PipelineError(f"--target {t.spec}: only the native runtime runs on a remote target (lowrank_bench)")
    runner, tmp = Runner(t), Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        write_model(tmp / "model.lrkm", model, cmvn, precision=Precision(runtime == "native-int8"))
        med = p90 = 0.0
        hyps = []
        for k, (a, sr) in enumerate(audio):
            path = tmp / f"utt{k}.f32"
            np.ascontiguousarray(resample(a, sr), dtype="<f4").tofile(path)
            r = runner.model(tmp / "model.lrkm", path, reps=reps)
            med, p90 = med + r["total_ms"]["median"], p90 + r["total_ms"]["p90"]
            hyps.append(r["text"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(med, p90, seconds, runtime, t.spec, 1, audio, reps, t.emulated, {"transcripts": hyps})


def _summary(median_ms, p90_ms, seconds, runtime, target, threads, rows, reps, emulated, extra):
    return {"median_ms": median_ms, "p90_ms": p90_ms, "rtf": median_ms / 1e3 / seconds, "runtime": runtime,
            "target": target, "threads": threads, "utterances": len(rows), "audio_seconds": seconds, "reps": reps,
            "emulated": emulated, **extra}
