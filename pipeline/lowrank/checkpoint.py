"""Checkpoints: tensors in safetensors plus a JSON header in its metadata.

Header (format version 1): `format_version`, `model_config`, `vocab`, `cmvn` (mean/std),
`ranks` (empty for a dense model), `provenance` (parent sha256, run, data manifests) and
`metrics` (measured WER etc.). A checkpoint loads on its own, without its parent.
"""
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.atomic import atomic_path
from pipeline.data.features import Cmvn
from pipeline.data.vocab import TOKENS
from pipeline.errors import PipelineError
from pipeline.lowrank.factorize import current_ranks, factorize, parse_rank_spec
from pipeline.model.asr import ASRModel
from pipeline.model.config import ModelConfig

FORMAT_VERSION = 1
MAGIC = "asr-pipeline-checkpoint"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path, model, cmvn, provenance=None, metrics=None, energy=None):
    """Save a dense or factored model; the ranks are read off the model itself."""
    header = {"format_version": FORMAT_VERSION, "model_config": model.cfg.to_dict(), "vocab": TOKENS,
              "cmvn": cmvn.to_json(), "ranks": current_ranks(model), "energy": energy or {},
              "provenance": provenance or {}, "metrics": metrics or {}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": MAGIC, "header": json.dumps(header)})


def read_header(path):
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000 or path.stat().st_size < 8 + n:
                raise ValueError("header length past the end of the file")
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise PipelineError(f"{path}: not a checkpoint or truncated ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != MAGIC:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise PipelineError(f"{path}: not a checkpoint of this pipeline (metadata field 'format' is {got!r})")
    try:
        header = json.loads(meta["header"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: metadata field 'header' is missing or not JSON ({e})") from None
    if not isinstance(header, dict):
        raise PipelineError(f"{path}: metadata field 'header' must be a JSON object")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PipelineError(f"{path}: field 'format_version' is {version!r}; this pipeline reads up to "
                            f"{FORMAT_VERSION}: upgrade the pipeline")
    if header.get("vocab") != TOKENS:
        raise PipelineError(f"{path}: field 'vocab' differs from this pipeline's vocabulary")
    return header


def load_checkpoint(path):
    """(model in eval mode, cmvn, header); every failure is a PipelineError naming the file and field."""
    header = read_header(path)
    cfg = ModelConfig.from_dict(header.get("model_config"), f"{path}: field 'model_config'")
    cmvn = Cmvn.from_json(header.get("cmvn"), f"{path}: field 'cmvn'")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise PipelineError(f"{path}: tensors unreadable, file truncated? ({e})") from None
    model = ASRModel(cfg)
    ranks = header.get("ranks") or {}
    if not isinstance(ranks, dict) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks.values()):
        raise PipelineError(f"{path}: field 'ranks' must map layer names to integer ranks")
    factorize(model, parse_rank_spec(ranks, model, snap=False, where=f"{path}: field 'ranks'",
                                           keep_unprofitable=True), init=False)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first_lines = " ".join(line.strip() for line in str(e).splitlines()[:2])
        raise PipelineError(f"{path}: tensors do not fit the model config and ranks ({first_lines})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PipelineError(f"{path}: tensor '{bad[0]}' has NaN or Inf values")
    return model.eval(), cmvn, header
