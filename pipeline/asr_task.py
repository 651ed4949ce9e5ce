"""The built-in LSTM attention recogniser as a task (pipeline/task.py): a checkpoint and a corpus.

Its metric is greedy WER: `evaluate` on evenly spaced `dev` utterances, `evaluate_subset` on the
search's representative subset (the corpus's checked `dev_subset.jsonl`, else a stratified 12% of
`dev`), both decoding batched features computed once. Its calibration run (for the whitened
factorisation) decodes evenly spaced `train` utterances. Its hooks keep its own formats and figures:
checkpoints with their config and CMVN (pipeline/lowrank/checkpoint.py), fine-tuning on `train`
(optionally distilled from the uncompressed model), WER per split, the ONNX encoder/decoder graphs
and the whole-model native file, the end-to-end benchmark side by side, and the native latency
table as the search's latency cost.
"""
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
from tqdm import tqdm

from export.native import Precision, beam_rows, write_model
from export.onnx_export import export
from pipeline.atomic import write_json
from pipeline.bench import bench, side_by_side
from pipeline.data.manifest import evenly_spaced, read_manifest
from pipeline.errors import PipelineError
from pipeline.finetune import finetune
from pipeline.latency.cost import CostModel
from pipeline.latency.table import LatencyTable, steps_per_frame
from pipeline.latency.targets import parse_target
from pipeline.lm_task import lm_fusion, load_lm
from pipeline.lowrank.checkpoint import load_checkpoint, save_checkpoint
from pipeline.model.decode import DecodeConfig
from pipeline.model.evaluate import SubsetWer, evaluate, score
from pipeline.search.evaluator import SubsetEvaluator
from pipeline.search.space import Approximator, searchable
from pipeline.search.subset import random_policies, spearman, stratified, write_subset
from pipeline.task import Task
from pipeline.train import process_group


@dataclass
class AsrConfig:
    dev_utterances: int = 300     # evenly spaced dev utterances scored per iteration (0: all)
    score_utterances: int = 200   # ... per split for the final scores (0: all)
    finetune_lr: float = 3e-4
    distill: float = 0.5          # weight of distillation from the uncompressed model in fine-tuning
    bench_utterances: int = 10
    calibration_utterances: int = 200  # evenly spaced train utterances decoded for the whitened factorisation
    lm: str = "assets/lm/lm.safetensors"  # the final scores also decode with this LM fused ("": greedy only)
    threads: int = 2
    seed: int = 0


def subset_path(data, out):
    """The search's subset: the corpus's checked one if there is one, else a stratified 12% of dev
    written into the run folder `out`."""
    checked = Path(data) / "dev_subset.jsonl"
    if checked.exists():
        return checked
    path = Path(out) / "dev_subset.jsonl"
    if not path.exists():
        write_subset(path, stratified(read_manifest(Path(data) / "dev.jsonl"), 0.12))
    return path


def calibration_rows(data, n):
    """The recogniser's calibration set: `n` evenly spaced utterances of the corpus's train split."""
    path = Path(data or ".") / "train.jsonl"
    if data is None or not path.exists():
        raise PipelineError(f"{path}: the whitened factorisation calibrates on a corpus's train split; "
                            f"give --data, or --method svd")
    return evenly_spaced(read_manifest(path), n)


def asr_task(model_path, data=None, cfg=AsrConfig(), out=None, subset=None):
    """The recogniser at `model_path` judged on the corpus at `data` (`out`: where a subset is
    written when the corpus has none; `subset`: a subset manifest of one's own). The manifests are
    read when first needed, so a search needs the subset alone."""
    model, cmvn, _ = load_checkpoint(model_path)
    data = Path(data) if data is not None else None
    subset = Path(subset) if subset is not None else subset_path(data, out if out is not None else data)
    manifest = cache(lambda split: read_manifest(data / f"{split}.jsonl"))

    def wer(m, rows):
        torch.set_num_threads(cfg.threads)
        metrics, _ = evaluate(m, cmvn, rows, progress=False)
        return {"metric": metrics["wer"], **metrics}

    def calibrate(m):
        torch.set_num_threads(cfg.threads)
        evaluate(m, cmvn, calibration(), progress=False)

    calibration = cache(lambda: calibration_rows(data, cfg.calibration_utterances))

    def tune(m, steps, workdir, iteration=0):
        rank, world = process_group()
        finetune(m, cmvn, manifest("train"), workdir, steps, cfg.finetune_lr, threads=cfg.threads, seed=cfg.seed + iteration,
                 progress=rank == 0, teacher=model if cfg.distill else None, distill=cfg.distill,
                 provenance={"finetune_steps": steps}, rank=rank, world=world)

    lm = cache(lambda: (load_lm(cfg.lm), DecodeConfig(**lm_fusion(cfg.lm))))  # read once, for every split

    def fused(m, rows):
        """WER and CER with the LM fused into beam search, at the LM's tuned settings."""
        torch.set_num_threads(cfg.threads)
        lm_model, dcfg = lm()
        s = score([r["text"] for r in rows], beam_rows(m, cmvn, rows, dcfg, lm_model, progress=False))
        return {"wer": s["wer"], "cer": s["cer"], "decoding": {"lm": cfg.lm, **asdict(dcfg)}}

    def scores(m):
        out = {}
        for split in ("dev", "test", "test_real"):
            manifest = data / f"{split}.jsonl"
            if manifest.exists():
                rows = evenly_spaced(read_manifest(manifest), cfg.score_utterances)
                out[split] = wer(m, rows)
                if cfg.lm:
                    out[split]["lm"] = fused(m, rows)
        return out

    def save(path, m, meta):
        save_checkpoint(path, m, cmvn, meta.get("provenance"), meta.get("metrics"), meta.get("energy"))

    def export_all(final, run):
        export(final, run / "export", int8=True, ort_format=True, log=lambda *_: None)
        (run / "native").mkdir(parents=True, exist_ok=True)
        m = load_checkpoint(final)[0]
        write_model(run / "native" / "model.lrkm", m, cmvn)
        write_model(run / "native" / "model.int8.lrkm", m, cmvn, precision=Precision(True))

    def benchmark(final, run, ccfg):
        runs = [("torch", model_path, "dense (PyTorch)"), ("native", model_path, "dense (native)"),
                ("torch", final, "compressed (PyTorch)"), ("native", final, "compressed (native)"),
                ("onnx", final, "compressed (onnxruntime)")]
        if ccfg.precision == "int8":
            runs += [("native-int8", model_path, "dense (native int8)"), ("onnx-int8", model_path,
                                                                          "dense (onnxruntime int8)"),
                     ("native-int8", final, "compressed (native int8)"),
                     ("onnx-int8", final, "compressed (onnxruntime int8)")]
        if parse_target(ccfg.device).kind == "local":
            results = side_by_side([(rt, ckpt) for rt, ckpt, _ in runs], data / "dev.jsonl", 1, cfg.bench_utterances,
                                   reps=3)
        else:
            results = [bench(ckpt, data / "dev.jsonl", rt, ccfg.device if rt == "native" else "local", 1,
                             cfg.bench_utterances, reps=3) for rt, ckpt, _ in runs]
        rows = [{"label": label, **{k: v for k, v in r.items() if k != "transcripts"}}
                for (_, _, label), r in zip(runs, results)]
        return {"threads": 1, "reference": "dense (native)", "runs": rows}

    def latency_cost(m, layer_list, scfg):
        """The native cost counts the decoder's LSTM at the subset's output steps per encoder frame;
        onnxruntime's, the encoder stack alone."""
        table = LatencyTable(scfg.device, scfg.runtime, precision=scfg.precision)
        table.measure(m)
        spf = steps_per_frame(read_manifest(subset), m.cfg) if scfg.runtime == "native" else 0.0
        return CostModel(m, layer_list, "latency", table, spf)

    return Task(model=model, evaluate=lambda m: wer(m, evenly_spaced(manifest("dev"), cfg.dev_utterances)),
                evaluate_subset=SubsetWer(cmvn, read_manifest(subset)),
                finetune=tune, calibrate=calibrate, metric="WER", name="asr", scores=scores, save=save,
                load=lambda path: load_checkpoint(path)[0], export=export_all, benchmark=benchmark,
                latency_cost=latency_cost,
                extra={"model": str(model_path), "data": str(data), "subset": str(subset), "asr": asdict(cfg)})


def build_subset(model, cmvn, rows, out, fraction=0.12, n_policies=20, seed=0, progress=True):
    """Writes the subset manifest `out` and its check `<out>.json`; returns the check."""
    out = Path(out)
    subset = stratified(rows, fraction, seed)
    approx = Approximator(model, searchable(model))
    policies = random_policies(model, n_policies, seed, approx)
    full = SubsetEvaluator(approx, SubsetWer(cmvn, rows), out.with_suffix(".check-full.jsonl"))
    part = SubsetEvaluator(approx, SubsetWer(cmvn, subset), out.with_suffix(".check-subset.jsonl"))
    full_wer, part_wer = [], []
    for p in tqdm(policies, desc="subset check (full manifest and subset)", unit="policy", disable=not progress):
        full_wer.append(full(p)["metric"])
        part_wer.append(part(p)["metric"])
    check = {"method": "stratified systematic: speakers, duration-sorted, every k-th (seeded start)",
             "fraction": fraction, "utterances": len(subset), "of": len(rows),
             "seconds": round(sum(r["duration"] for r in subset), 1), "seed": seed,
             "policies": n_policies, "spearman": spearman(full_wer, part_wer),
             "full_wer": full_wer, "subset_wer": part_wer, "policy_list": policies}
    write_subset(out, subset)
    write_json(out.with_suffix(".json"), check)
    return check
