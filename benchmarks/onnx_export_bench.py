"""Exported models in onnxruntime against PyTorch, side by side in one run (1 thread):
parity on a manifest (greedy transcripts identical, WER of each, int8 beside fp32) and latency per
second of audio of the dense model, a compressed copy (each low-rank lowering) and their int8 versions.

    python benchmarks/onnx_export_bench.py --model CKPT [--manifest corpus/default/dev.jsonl] \
        [--fraction 0.25] [--latency-utterances 20] [--json results/onnx_export.json]

The compressed copy is the checkpoint factorised at one uniform rank fraction (no fine-tuning).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from export.onnx_export import export  # noqa: E402
from export.runner import OnnxAsr, fbank  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.data.audio import load_audio  # noqa: E402
from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.lowrank import factorize, uniform_ranks  # noqa: E402
from pipeline.lowrank.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pipeline.machine import cpu_name  # noqa: E402
from pipeline.model.evaluate import score, transcribe_rows  # noqa: E402


def onnx_transcripts(asr, rows, desc):
    out = []
    for r in tqdm(rows, desc=desc, unit="utt", leave=False):
        out.append(asr.transcribe(*load_audio(r["audio_filepath"], allow_multichannel=True)))
    return out


def latency(asr, rows):
    """Seconds of compute per second of audio (features, encoder and greedy decoding), and the encoder's share."""
    total = enc_total = audio_s = 0.0
    for r in rows:
        audio, sr = load_audio(r["audio_filepath"], allow_multichannel=True)
        t0 = time.perf_counter()
        enc, keys, ctc = asr.encode(fbank(audio, sr))
        t1 = time.perf_counter()
        asr.greedy(enc, keys, asr.max_steps(enc, ctc))
        total += time.perf_counter() - t0
        enc_total += t1 - t0
        audio_s += len(audio) / sr
    return total / audio_s, enc_total / audio_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", default="corpus/default/dev.jsonl")
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--latency-utterances", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = read_manifest(args.manifest)
    refs = [r["text"] for r in rows]
    work = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    model, cmvn, _ = load_checkpoint(args.model)
    factorize(model, uniform_ranks(model, args.fraction))
    save_checkpoint(work / "compressed.safetensors", model, cmvn)
    exports = {"dense": export(args.model, work / "dense", int8=True, log=print)}
    for lowering in ("lstm_op", "scan"):
        exports[f"r{args.fraction:g} {lowering}"] = export(work / "compressed.safetensors", work / lowering, int8=True,
                                                           lowering=lowering, log=print)
    model, cmvn, _ = load_checkpoint(args.model)
    torch_hyps = transcribe_rows(model, cmvn, rows)
    onnx_hyps = onnx_transcripts(OnnxAsr(work / "dense"), rows, "onnx fp32")
    int8_hyps = onnx_transcripts(OnnxAsr(work / "dense", "int8"), rows, "onnx int8")
    same = sum(a == b for a, b in zip(torch_hyps, onnx_hyps)) / len(rows)
    wer = {"torch": score(refs, torch_hyps)["wer"], "onnx fp32": score(refs, onnx_hyps)["wer"],
           "onnx int8": score(refs, int8_hyps)["wer"]}
    step = max(1, math.ceil(len(rows) / args.latency_utterances))
    lat_rows = rows[::step]
    lat = {}
    for name in exports:
        d = work / ("dense" if name == "dense" else name.split()[-1])
        for variant in ("fp32", "int8"):
            lat[f"{name} {variant}"] = latency(OnnxAsr(d, variant), lat_rows)
    print(f"\n# ONNX export, {cpu_name()}, onnxruntime 1 thread, {args.model}")
    print(f"parity on {args.manifest} ({len(rows)} utterances): greedy transcripts identical {same:.2%}; "
          f"WER torch {wer['torch']:.4f}, onnx fp32 {wer['onnx fp32']:.4f}, onnx int8 {wer['onnx int8']:.4f}")
    print(f"latency on {len(lat_rows)} utterances, seconds per second of audio (encoder share):")
    base = lat["dense fp32"][0]
    for name, (rtf, enc) in lat.items():
        print(f"  {name:24s} {rtf:.4f} ({enc:.4f})  {base / rtf:5.2f}x of dense fp32")
    if args.json:
        write_json(args.json, {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "threads": 1,
                               "machine": cpu_name(), "utterances": len(rows),
                               "identical_transcripts": same, "wer": wer, "rtf": {k: v[0] for k, v in lat.items()},
                               "encoder_rtf": {k: v[1] for k, v in lat.items()},
                               "lowering": {k: v["lowering"] for k, v in exports.items()}})


if __name__ == "__main__":
    main()
