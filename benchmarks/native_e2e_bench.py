"""End-to-end native transcription (`export.native.NativeAsr`, all in C++) of checkpoints side by
side, split into its stages: filterbank features with CMVN, the convolutional subsampling, the
encoder's LSTM stack and the greedy attention decoder; milliseconds over a fixed utterance set, 1 thread, median of the
repetitions; each checkpoint's speedup over the first is the median of the repetitions' ratios
(their range printed beside it), the models taking turns utterance by utterance. A model given as
PATH@int8 runs with its weight matrices in int8 (`export.native.Precision`).

    python benchmarks/native_e2e_bench.py --models assets/baseline/model.safetensors runs/compress/final.safetensors \
        [--manifest corpus/default/test.jsonl] [--utterances 10] [--reps 5] [--json results/native_e2e.json]
"""
import argparse
import statistics

import numpy as np
import torch

from export import native
from pipeline.atomic import write_json
from pipeline.bench import fixed_utterances, utterance_audio
from pipeline.bench import speedup as pass_speedup
from pipeline.data.audio import SAMPLE_RATE, resample
from pipeline.lowrank import cost_table
from pipeline.lowrank.checkpoint import load_checkpoint
from pipeline.machine import cpu_name

STAGES = ("features", "subsampling", "encoder_lstm", "decoder")


def stage_ms(asrs, audio):
    """Milliseconds per stage of each model over the utterance set, once, as lrk::Asr times them.
    Every utterance goes through all models before the next one, so that a slow spell of the
    machine (they last seconds here) falls on all of them alike."""
    ms = [dict.fromkeys(STAGES, 0.0) for _ in asrs]
    for a in audio:
        for asr, m in zip(asrs, ms):
            for k, v in asr.run(a)["ms"].items():
                m[k] += v
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--manifest", default="corpus/default/test.jsonl")
    ap.add_argument("--utterances", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    audio = [np.ascontiguousarray(resample(a, sr)) for a, sr in utterance_audio(fixed_utterances(args.manifest, args.utterances))]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    loaded = []
    for spec in args.models:
        path, _, precision = spec.partition("@")
        model, cmvn, _ = load_checkpoint(path)
        loaded.append((spec, model, native.NativeAsr(model, cmvn, precision=native.Precision(precision == "int8"))))
    runs = {path: [] for path in args.models}
    for rep in range(args.reps + 1):
        for (path, _, _), ms in zip(loaded, stage_ms([asr for _, _, asr in loaded], audio)):
            if rep:  # the first pass warms up
                runs[path].append(ms)
    totals = {path: [sum(r.values()) for r in runs[path]] for path in args.models}
    rows, first = [], args.models[0]
    print(f"{cpu_name()}, 1 thread, {len(audio)} utterances ({seconds:.1f} s of audio), median of {args.reps}")
    print(f"{'model':48} {'LSTM x':>7} " + " ".join(f"{k:>12}" for k in STAGES) + f" {'total':>8} {'speedup':>8} {'range':>11}")
    for path, model, _ in loaded:
        med = {k: statistics.median(r[k] for r in runs[path]) for k in STAGES}
        total = statistics.median(totals[path])
        speedup, lo, hi = pass_speedup(totals[first], totals[path])
        lstm_x = cost_table(model)[1]["lstm_compression"]
        rows.append({"model": path, "lstm_compression": lstm_x, "stages_ms": med, "total_ms": total,
                     "speedup": speedup, "speedup_range": [lo, hi]})
        print(f"{path[-48:]:48} {lstm_x:7.2f} " + " ".join(f"{med[k]:12.1f}" for k in STAGES)
              + f" {total:8.1f} {speedup:8.2f} {lo:5.2f}-{hi:<5.2f}")
    if args.json:
        write_json(args.json, {"machine": f"{cpu_name()}, 1 thread", "manifest": args.manifest,
                               "utterances": len(audio), "audio_seconds": seconds, "reps": args.reps, "runs": rows,
                               "command": "python benchmarks/native_e2e_bench.py --models " + " ".join(args.models)})


if __name__ == "__main__":
    main()
