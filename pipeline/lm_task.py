"""The character language model (pipeline/model/lm.py) as a task, and its files.

    python -m pipeline lm train --data corpus/default --out runs/lm/dense.safetensors
    python -m pipeline compress --task pipeline.lm_task:task --task-arg lm=runs/lm/dense.safetensors \\
        --task-arg data=corpus/default --target-compression 3 --iterations 2 --out runs/lm-compress

Its metric is bits per character of `dev`'s transcripts (the search reads a fifth of them); it is
fine-tuned on `train`'s transcripts, and only its LSTM is searched. A language model file is the
generic factored checkpoint (pipeline/task.py) whose header also holds {"kind": "char-lm",
"lm_config", "vocab"}: dense from `lm train`, factored from `compress`.
"""
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from pipeline.data.vocab import TOKENS
from pipeline.errors import PipelineError
from pipeline.model.lm import CharLM, LmConfig, bits_per_char, lm_meta, manifest_texts, train_lm
from pipeline.task import Task, load_factored, save_factored


def save_lm(path, model, meta=None):
    save_factored(path, model, {**lm_meta(model), **(meta or {})})


def read_lm_header(path):
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("header", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: not a readable language model ({e})") from None


# Where an LM file holds no tuned settings yet (benchmarks/lm_fusion_grid.py --write tunes them).
DEFAULT_FUSION = {"beam": 8, "lm_weight": 0.1, "length_bonus": 0.0, "length_penalty": 1.0}


def lm_fusion(path):
    """The LM file's tuned fusion settings {beam, lm_weight, length_bonus, length_penalty}."""
    tuned = read_lm_header(path).get("fusion") or {}
    return {k: tuned.get(k, v) for k, v in DEFAULT_FUSION.items()}


def load_lm(path):
    """A language model written by `lm train` or `compress` (dense or factored), in eval mode."""
    if not Path(path).is_file():
        raise PipelineError(f"{path}: no such language model file")
    header = read_lm_header(path)
    if header.get("kind") != "char-lm":
        raise PipelineError(f"{path}: field 'kind' is {header.get('kind')!r}, not a character language model")
    if header.get("vocab") != TOKENS:
        raise PipelineError(f"{path}: field 'vocab' differs from the recogniser's vocabulary")
    cfg = LmConfig.from_dict(header.get("lm_config"), where=f"{path}: field 'lm_config'")
    return load_factored(path, CharLM(cfg))


def task(lm, data="corpus/default", finetune_lr=1e-3, subset_fraction=0.2):
    train_texts, _ = manifest_texts(Path(data) / "train.jsonl")
    dev_texts, _ = manifest_texts(Path(data) / "dev.jsonl")
    test_texts, _ = manifest_texts(Path(data) / "test.jsonl")
    subset = dev_texts[:: max(1, round(1 / subset_fraction))]
    model = load_lm(lm)
    calibration = train_texts[::max(1, len(train_texts) // 200)]
    return Task(model=model,
                evaluate=lambda m: bits_per_char(m, dev_texts),
                evaluate_subset=lambda m: bits_per_char(m, subset),
                finetune=lambda m, steps: train_lm(m, train_texts, steps, lr=finetune_lr, seed=1),
                calibrate=lambda m: bits_per_char(m, calibration),
                example_inputs=(model.embed.weight.new_zeros(1, 32).long(),),
                scores=lambda m: {k: {"metric": bits_per_char(m, t)} for k, t in (("dev", dev_texts), ("test", test_texts))},
                save=save_lm, load=load_lm,
                metric="bits/char", types=["LSTM"], name="char-lm")
