"""The character LM in the runtimes, side by side in one run:
1. the same hypotheses: beam search + LM in PyTorch, onnxruntime and the native runtime on evenly
   spaced `dev` utterances (each difference printed);
2. the native runtime's real-time factor at 1 thread, greedy against beam + LM, same utterances;
3. the LM's latency per step (1 and `beam` hypotheses), native against onnxruntime, dense and
   compressed, with its LSTM weights and bits per character on dev and test text.

    python benchmarks/lm_bench.py [--model assets/compressed-7x/model.safetensors] [--lm assets/lm/lm.safetensors]
        [--dense-lm runs/lm/dense.safetensors] [--agreement 100] [--rtf 20] [--json results/lm_bench.json]
"""
import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from export.generic import session  # noqa: E402
from export.native import NativeAsr, native_lm  # noqa: E402
from export.onnx_export import export, export_lm  # noqa: E402
from export.runner import OnnxAsr  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.data.audio import load_audio, resample  # noqa: E402
from pipeline.data.features import fbank  # noqa: E402
from pipeline.data.manifest import evenly_spaced, read_manifest  # noqa: E402
from pipeline.data.vocab import SOS  # noqa: E402
from pipeline.lm_task import lm_fusion, load_lm  # noqa: E402
from pipeline.lowrank.accounting import cost_table  # noqa: E402
from pipeline.lowrank.checkpoint import load_checkpoint  # noqa: E402
from pipeline.machine import cpu_name  # noqa: E402
from pipeline.model.decode import DecodeConfig, decode  # noqa: E402
from pipeline.model.lm import bits_per_char, manifest_texts  # noqa: E402


def agreement(model, cmvn, lm, cfg, rows, onnx_dir):
    onnx = OnnxAsr(onnx_dir)
    nat = NativeAsr(model, cmvn, cfg, lm=lm)
    same, diffs = 0, []
    for r in rows:
        audio, sr = load_audio(r["audio_filepath"])
        f = cmvn(fbank(audio, sr))
        with torch.no_grad():
            t = decode(model, f[None], torch.tensor([f.shape[0]]), cfg, lm)[0]
        o = onnx.transcribe(audio, sr, beam=cfg.beam, lm_weight=cfg.lm_weight, length_bonus=cfg.length_bonus,
                            length_penalty=cfg.length_penalty)
        n = nat.transcribe(audio, sr)
        if t == o == n:
            same += 1
        else:
            diffs.append({"id": r.get("id"), "torch": t, "onnxruntime": o, "native": n})
    return same, diffs


def rtf(model, cmvn, lm, cfg, rows, small_beam, reps=3):
    """Native milliseconds per utterance (best of reps) and real-time factor: greedy, beam + LM, and
    beam + LM at a smaller beam."""
    out = {}
    for name, c in (("greedy", DecodeConfig()), ("beam+lm", cfg), (f"beam+lm, beam {small_beam}", replace(cfg, beam=small_beam))):
        asr, total_ms, seconds = NativeAsr(model, cmvn, c, lm=lm), 0.0, 0.0
        for r in rows:
            audio, sr = load_audio(r["audio_filepath"])
            x = np.ascontiguousarray(resample(audio, sr).astype(np.float32))
            total_ms += min(sum(asr.run(x)["ms"].values()) for _ in range(reps))
            seconds += len(x) / 16000
        out[name] = {"ms": total_ms, "audio_seconds": seconds, "rtf": total_ms / 1e3 / seconds}
    out["ratio"] = out["beam+lm"]["ms"] / out["greedy"]["ms"]
    out["ratio_small_beam"] = out[f"beam+lm, beam {small_beam}"]["ms"] / out["greedy"]["ms"]
    return out


def step_us(step, k, reps=300):
    tokens = [SOS] * k
    for _ in range(10):
        step(tokens)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step(tokens)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def lm_figures(lm, k, tmp, data):
    """LSTM weights, bits/char on dev and test text, and per-step latency native vs onnxruntime."""
    nat = native_lm(lm)
    export_lm(lm, tmp, "lm")
    sess = session(Path(tmp) / "lm_step.onnx", threads=1)
    layers, hidden = lm.cfg.layers, lm.cfg.hidden
    out = {"lstm_weights": cost_table(lm)[1]["lstm_params"]}
    for split in ("dev", "test"):
        out[f"bits_per_char_{split}"] = bits_per_char(lm, manifest_texts(Path(data) / f"{split}.jsonl")[0])
    for n in (1, k):
        h = np.zeros((layers, n, hidden), np.float32)

        def onnx_step(tokens, h=h):
            return sess.run(None, {"token": np.array(tokens, np.int64), "h": h, "c": h})

        def native_step(tokens):
            nat.reset()  # every call from the zero state, as the ONNX call above
            return nat.step(tokens)

        out[f"native_us_k{n}"] = step_us(native_step, n)
        out[f"onnxruntime_us_k{n}"] = step_us(onnx_step, n)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="assets/compressed-7x/model.safetensors")
    p.add_argument("--baseline", default="assets/baseline/model.safetensors")
    p.add_argument("--lm", default="assets/lm/lm.safetensors")
    p.add_argument("--dense-lm", help="the uncompressed LM, for its figures beside the compressed one's")
    p.add_argument("--data", default="corpus/default")
    p.add_argument("--agreement", type=int, default=100, help="dev utterances decoded in all three runtimes")
    p.add_argument("--rtf", type=int, default=20, help="dev utterances timed greedy and beam + LM")
    p.add_argument("--small-beam", type=int, default=4, help="beam + LM timed at this beam too")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    lm = load_lm(args.lm)
    fusion = lm_fusion(args.lm)
    cfg = DecodeConfig(**fusion)
    dev = read_manifest(Path(args.data) / "dev.jsonl")
    result = {"machine": cpu_name(), "threads": 1, "model": args.model, "lm": args.lm, "fusion": fusion,
              "command": "python " + " ".join(sys.argv)}
    model, cmvn, _ = load_checkpoint(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        export(args.model, tmp, lowering="lstm_op", log=lambda *_: None, lm=lm)
        same, diffs = agreement(model, cmvn, lm, cfg, evenly_spaced(dev, args.agreement), tmp)
    n = min(args.agreement, len(dev))
    result["agreement"] = {"utterances": n, "identical": same, "differences": diffs}
    print(f"identical transcripts in PyTorch, onnxruntime and native: {same} of {n} dev utterances")
    for d in diffs:
        print(f"  {d['id']}:\n    torch       {d['torch']}\n    onnxruntime {d['onnxruntime']}\n    native      {d['native']}")
    rows = evenly_spaced(dev, args.rtf)
    result["rtf"] = {}
    for label, path in (("compressed", args.model), ("baseline", args.baseline)):
        m, c, _ = load_checkpoint(path)
        r = result["rtf"][label] = rtf(m, c, lm, cfg, rows, args.small_beam)
        print(f"native RTF, 1 thread, {label} ({len(rows)} dev utterances): greedy {r['greedy']['rtf']:.4f}, beam + LM "
              f"{r['beam+lm']['rtf']:.4f}: {r['ratio']:.2f}x the greedy time; at beam {args.small_beam} "
              f"{r[f'beam+lm, beam {args.small_beam}']['rtf']:.4f}: {r['ratio_small_beam']:.2f}x")
    result["lm"] = {}
    for label, path in (("compressed", args.lm), ("dense", args.dense_lm)):
        if path:
            with tempfile.TemporaryDirectory() as tmp:
                f = result["lm"][label] = lm_figures(load_lm(path), cfg.beam, tmp, args.data)
            print(f"LM {label}: {f['lstm_weights']:,} LSTM weights, bits/char dev {f['bits_per_char_dev']:.4f} test "
                  f"{f['bits_per_char_test']:.4f}; per step native {f['native_us_k1']:.1f} us (k=1), "
                  f"{f[f'native_us_k{cfg.beam}']:.1f} us (k={cfg.beam}); onnxruntime {f['onnxruntime_us_k1']:.1f} us, "
                  f"{f[f'onnxruntime_us_k{cfg.beam}']:.1f} us")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
