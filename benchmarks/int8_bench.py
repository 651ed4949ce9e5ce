"""int8 against fp32 on this machine, 1 thread, in one run:

1. The LSTM kernels at H = 512, one frame per call (streaming), factored at rank r and dense:
   `lowrank_bench` (C++, no Python) in fp32 and in int8, the four taking turns process by process;
   each int8 figure beside its bound: its weight bytes over the read bandwidth measured on a buffer
   of that size (the cache level they sit in), or its multiply-adds over the measured int8 peak,
   whichever is larger.
2. End to end on `test` utterances (features, encoder, greedy decoding): the native runtime in fp32
   and int8 and onnxruntime in fp32 and int8 (its dynamic quantisation), dense and compressed, the
   runtimes taking turns utterance by utterance (pipeline.bench.side_by_side); speedups are the
   median of the per-pass ratios.

    python benchmarks/int8_bench.py [--dense assets/baseline/model.safetensors] \
        [--compressed assets/compressed-7x/model.safetensors] [--manifest corpus/default/test.jsonl] \
        [--utterances 10] [--reps 5] [--json results/int8_bench.json]
    python benchmarks/int8_bench.py --isa avx2 --kernels-only     # another kernel path of this CPU
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys

from pipeline.atomic import write_json
from pipeline.bench import side_by_side, speedup
from pipeline.latency.targets import binary_for
from pipeline.machine import cpu_name

KERNEL_GOAL, BOUND_GOAL = 2.5, 1.3
E2E_GOALS = (("compressed native int8", "dense native fp32", 7.0),
             ("compressed native int8", "compressed onnxruntime int8", 3.0),
             ("dense native int8", "dense onnxruntime int8", 1.5))


def _bench(binary, *args):
    out = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def kernels(hidden, rank, processes, isa="auto", frames=200, reps=30):
    """{(rank, precision): per-process medians, first report} of the streaming step."""
    binary = binary_for(platform.machine())
    configs = [(r, p) for r in (rank, 0) for p in ("fp32", "int8")]
    runs = {c: [] for c in configs}
    reports = {}
    for _ in range(processes):
        for r, p in configs:
            rep = _bench(binary, "--synthetic", f"1,1,{hidden},{hidden},{r},{r}", "--mode", "stream", "--frames",
                         frames, "--reps", reps, "--precision", p, "--isa", isa)
            runs[(r, p)].append(rep["us_per_frame"]["median"])
            reports.setdefault((r, p), rep)
    return binary, runs, reports


def bound_us(binary, rep, hidden, rank):
    """max(weight bytes / read bandwidth at that size, multiply-adds / peak), in us, and its parts."""
    size = rep["input_weight_bytes"] + rep["recurrent_weight_bytes"]
    roof = max((_bench(binary, "--synthetic", "1,1,8,8,0,0", "--frames", 1, "--reps", 1, "--roofline", size,
                       "--isa", rep["isa"])["roofline"]
                for _ in range(3)), key=lambda r: r["read_gbps"])
    macs = 2 * (4 * hidden * hidden if rank == 0 else rank * (5 * hidden))
    peak = roof["peak_int8_gmacs"] if rep["precision"] == "int8" else roof["peak_gflops"] / 2
    memory, compute = size / roof["read_gbps"] / 1e3, macs / peak / 1e3
    return max(memory, compute), {"bytes": size, "read_gbps": roof["read_gbps"], "memory_us": memory,
                                  "macs": macs, "peak_gmacs": peak, "compute_us": compute}


def kernel_section(args):
    binary, runs, reports = kernels(args.hidden, args.rank, args.processes, args.isa)
    rows = {}
    print(f"kernels: H = {args.hidden}, one frame per call, {reports[(0, 'int8')]['isa']} path; median of "
          f"{args.processes} processes (each the median of its repetitions)")
    print(f"{'step':12} {'fp32 us':>9} {'int8 us':>9} {'int8 x':>7} {'bound us':>9} {'int8/bound':>10}  bound by")
    for r in (args.rank, 0):
        name = f"r = {r}" if r else "dense"
        fp32, int8 = statistics.median(runs[(r, "fp32")]), statistics.median(runs[(r, "int8")])
        ratio = statistics.median(a / b for a, b in zip(runs[(r, "fp32")], runs[(r, "int8")]))
        bound, parts = bound_us(binary, reports[(r, "int8")], args.hidden, r)
        by = "memory" if parts["memory_us"] >= parts["compute_us"] else "int8 peak"
        rows[name] = {"fp32_us": fp32, "int8_us": int8, "speedup": ratio, "int8_bound_us": bound,
                      "int8_over_bound": int8 / bound, "bound": parts, "fp32_runs": runs[(r, "fp32")],
                      "int8_runs": runs[(r, "int8")]}
        print(f"{name:12} {fp32:9.2f} {int8:9.2f} {ratio:7.2f} {bound:9.2f} {int8 / bound:10.2f}  {by} "
              f"({parts['bytes'] / 1e6:.2f} MB at {parts['read_gbps']:.0f} GB/s; {parts['peak_gmacs']:.0f} GMAC/s)")
    for name, row in rows.items():
        print(f"  {name}: int8 {row['speedup']:.2f}x fp32 (goal >= {KERNEL_GOAL}) "
              f"{'ok' if row['speedup'] >= KERNEL_GOAL else 'MISSED'}; {row['int8_over_bound']:.2f}x its bound "
              f"(goal <= {BOUND_GOAL}) {'ok' if row['int8_over_bound'] <= BOUND_GOAL else 'MISSED'}")
    return rows


def e2e_section(args):
    runs = [("dense native fp32", "native", args.dense), ("dense native int8", "native-int8", args.dense),
            ("dense onnxruntime int8", "onnx-int8", args.dense),
            ("compressed native fp32", "native", args.compressed),
            ("compressed native int8", "native-int8", args.compressed),
            ("compressed onnxruntime fp32", "onnx", args.compressed),
            ("compressed onnxruntime int8", "onnx-int8", args.compressed)]
    results = side_by_side([(rt, ckpt) for _, rt, ckpt in runs], args.manifest, 1, args.utterances, args.reps)
    by = {label: r for (label, _, _), r in zip(runs, results)}
    ref = by["dense native fp32"]
    print(f"\nend to end: {results[0]['utterances']} utterances of {args.manifest} "
          f"({results[0]['audio_seconds']:.1f} s of audio), median of {args.reps} passes")
    print(f"{'runtime':30} {'ms':>8} {'RTF':>8} {'x dense native fp32':>20}")
    rows = {}
    for label, r in by.items():
        x = speedup(ref["pass_ms"], r["pass_ms"])
        rows[label] = {"median_ms": r["median_ms"], "rtf": r["rtf"], "speedup_vs_dense_native_fp32": x[0],
                       "pass_ms": r["pass_ms"], "transcripts": r["transcripts"]}
        print(f"{label:30} {r['median_ms']:8.1f} {r['rtf']:8.4f} {x[0]:14.2f} ({x[1]:.2f}-{x[2]:.2f})")
    goals = []
    for a, b, goal in E2E_GOALS:
        x = speedup(by[b]["pass_ms"], by[a]["pass_ms"])[0]
        goals.append({"faster": a, "than": b, "speedup": x, "goal": goal})
        print(f"  {a} vs {b}: {x:.2f}x (goal >= {goal}) {'ok' if x >= goal else 'MISSED'}")
    return rows, goals


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--processes", type=int, default=5, help="lowrank_bench processes per kernel figure")
    ap.add_argument("--dense", default="assets/baseline/model.safetensors")
    ap.add_argument("--compressed", default="assets/compressed-7x/model.safetensors")
    ap.add_argument("--manifest", default="corpus/default/test.jsonl")
    ap.add_argument("--utterances", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--isa", default="auto", help="the kernel path of the kernel section (default: the best)")
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"{cpu_name()}, 1 thread")
    kern = kernel_section(args)
    e2e, goals = ({}, []) if args.kernels_only else e2e_section(args)
    if args.json:
        write_json(args.json, {"machine": f"{cpu_name()}, 1 thread", "kernels": kern, "end_to_end": e2e,
                               "end_to_end_goals": goals, "command": "python " + " ".join(sys.argv)})


if __name__ == "__main__":
    main()
