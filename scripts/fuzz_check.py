"""The C++ readers of untrusted files under AddressSanitizer and UndefinedBehaviorSanitizer: the
sanitized C++ checks (kernel_check, lowrank_bench on a synthetic stack, on a model file and a wav
file), every regression input replayed, then a bounded fuzz run of each libFuzzer target from seeds
made by the real exporters. Exits non-zero on any finding, naming the input.

    python scripts/fuzz_check.py --build build/fuzz [--seconds 60]     # make fuzz-check
"""
import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fuzz_seeds  # noqa: E402

TARGETS = ("model_file", "stack", "audio")


def run(cmd, what, timeout=600):
    t0 = time.time()
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        sys.exit(f"fuzz-check: {what} failed (exit {res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-6000:]}")
    print(f"{what}: ok ({time.time() - t0:.1f} s)")
    return res


def sanitized_checks(build, seeds):
    bench = build / "lowrank_bench"
    run([build / "kernel_check"], "kernel_check")
    for mode in ("utterance", "stream"):
        run([bench, "--synthetic", "2,1,48,64,16,8", "--mode", mode, "--frames", 20, "--reps", 2], f"lowrank_bench {mode}")
    run([bench, "--synthetic", "2,2,48,64,0,16", "--frames", 20, "--reps", 2], "lowrank_bench bidirectional")
    run([bench, "--model", seeds / "model_file/bi-factored.lrkm", "--audio", seeds / "audio/second.wav", "--reps", 1],
        "lowrank_bench --model")
    run([bench, "--model", seeds / "model_file/uni-factored-lm.lrkm", "--audio", seeds / "audio/second.wav", "--reps", 1,
         "--beam", 4, "--lm-weight", 0.5, "--length-bonus", 0.5], "lowrank_bench --model, beam search with its LM")


def fuzz(build, target, seeds, seconds):
    corpus, crashes = build / "corpus" / target, build / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    binary = build / f"fuzz_{target}"
    regressions = sorted(p for p in (ROOT / "tests/fuzz/regressions" / target).glob("*") if p.name != ".keep")
    if regressions:
        run([binary, *regressions], f"fuzz_{target}: {len(regressions)} regression inputs")
    res = run([binary, f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=20", "-print_final_stats=1",
               f"-artifact_prefix={crashes}/{target}-", corpus, seeds / target], f"fuzz_{target} ({seconds} s)",
              timeout=seconds + 300)
    runs = re.search(r"stat::number_of_executed_units:\s+(\d+)", res.stderr)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", res.stderr)
    print(f"  {runs.group(1) if runs else '?'} inputs, coverage {cov[-1][0] if cov else '?'} edges "
          f"({cov[-1][1] if cov else '?'} features)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build/fuzz")
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    args = ap.parse_args()
    build = Path(args.build)
    seeds = build / "seeds"
    fuzz_seeds.main(seeds)
    sanitized_checks(build, seeds)
    for target in TARGETS:
        fuzz(build, target, seeds, args.seconds)


if __name__ == "__main__":
    main()
