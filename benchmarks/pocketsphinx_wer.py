"""WER of pocketsphinx (Debian `pocketsphinx` + `pocketsphinx-en-us`) on manifests: the independent
reference the baseline must beat by far.

    python benchmarks/pocketsphinx_wer.py corpus/default/test.jsonl corpus/default/test_real.jsonl \
        [--out results/pocketsphinx_wer.json] [--json]

Audio is written as 16 kHz 16-bit wav and decoded with `pocketsphinx_batch` (one process per core);
hypotheses are normalised like the transcripts before scoring. Each manifest's scores are added to
`--out` as soon as they are known, and manifests already there are not decoded again (slow: ~0.5 s
of CPU per second of audio here).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf

from pipeline.atomic import write_json
from pipeline.data.audio import load_audio, resample
from pipeline.data.manifest import read_manifest
from pipeline.data.text import normalize
from pipeline.model.evaluate import score

MODEL = Path("/usr/share/pocketsphinx/model/en-us")


def decode(rows, workdir, jobs):
    wavs = []
    for i, r in enumerate(rows):
        audio, sr = load_audio(r["audio_filepath"], allow_multichannel=True)
        sf.write(workdir / f"u{i:06d}.wav", resample(audio, sr), 16000, subtype="PCM_16")
        wavs.append(f"u{i:06d}")
    shards = [wavs[k::jobs] for k in range(jobs)]

    def run(k):
        ctl, hyp = workdir / f"ctl{k}", workdir / f"hyp{k}"
        ctl.write_text("\n".join(shards[k]) + "\n")
        subprocess.run(["pocketsphinx_batch", "-adcin", "yes", "-cepdir", str(workdir), "-cepext", ".wav",
                        "-ctl", str(ctl), "-hyp", str(hyp), "-hmm", str(MODEL / "en-us"),
                        "-lm", str(MODEL / "en-us.lm.bin"), "-dict", str(MODEL / "cmudict-en-us.dict"),
                        "-logfn", os.devnull], check=True)
        out = {}
        for line in hyp.read_text().splitlines():
            text, _, rest = line.rpartition(" (")
            out[rest.split()[0]] = text
        return out

    with ThreadPoolExecutor(jobs) as ex:
        found = {k: v for d in ex.map(run, range(jobs)) for k, v in d.items()}
    return [normalize(found.get(w, "")) for w in wavs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifests", nargs="+")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="results/pocketsphinx_wer.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for m in args.manifests:
        if m not in results:
            rows = read_manifest(m)
            with tempfile.TemporaryDirectory() as tmp:
                hyps = decode(rows, Path(tmp), args.jobs)
            results[m] = score([r["text"] for r in rows], hyps)
            write_json(out, results)
        if not args.json:
            s = results[m]
            print(f"{m}: pocketsphinx WER {s['wer']:.4f} CER {s['cer']:.4f} on {s['utterances']} utterances", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
