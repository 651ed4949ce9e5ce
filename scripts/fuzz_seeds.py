"""Seed corpora for the fuzz targets of csrc/fuzz/, made by the real exporters: small models (dense
and factored, one and two directions, fp32 and int8, with and without a character LM; LSTM stacks
with projections too) written by
export/native.py, and wav files written by soundfile.

    python scripts/fuzz_seeds.py OUT_DIR      # writes OUT_DIR/{model_file,stack,audio}/
"""
import io
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from export import native
from pipeline.data.features import Cmvn, FeatureConfig
from pipeline.lowrank import factorize, uniform_ranks
from pipeline.model.asr import ASRModel
from pipeline.model.config import ModelConfig
from pipeline.model.lm import CharLM, LmConfig

MELS = 24  # a small front end keeps the seeds small (the mel matrix is mels x 257 floats)


def models():
    for bidirectional in (True, False):
        torch.manual_seed(0)
        cfg = ModelConfig(n_mels=MELS, enc_layers=2, enc_hidden=16, dec_hidden=16, att_dim=8, conv_channels=4,
                          embed_dim=8, att_conv_channels=2, att_conv_kernel=5, dropout=0.0, bidirectional=bidirectional)
        dense = ASRModel(cfg).eval()
        yield f"{'bi' if bidirectional else 'uni'}-dense", dense
        yield f"{'bi' if bidirectional else 'uni'}-factored", factorize(dense, uniform_ranks(dense, 0.25, snap=False))


def projected():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(12, 16, num_layers=2, bidirectional=True, proj_size=8).eval()
    yield "proj-dense", lstm
    yield "proj-factored", factorize(lstm, uniform_ranks(lstm, 0.5, snap=False))


def main(out):
    out = Path(out)
    for sub in ("model_file", "stack", "audio"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cmvn = Cmvn(torch.zeros(MELS), torch.ones(MELS))
    torch.manual_seed(0)
    lm = CharLM(LmConfig(embed=8, hidden=16, layers=2, dropout=0.0)).eval()
    for name, model in models():
        entries = {**native.model_entries(model, cmvn),
                   **native.frontend_entries(model, cmvn, FeatureConfig(num_mel_bins=MELS))}
        (out / "model_file" / f"{name}.lrkm").write_bytes(native.encode(entries))
        (out / "stack" / f"{name}.lrkm").write_bytes(native.encode(native.stack_entries(model.encoder)))
        int8 = native.model_entries(model, cmvn, precision=native.Precision(True))
        int8.update(native.frontend_entries(model, cmvn, FeatureConfig(num_mel_bins=MELS)))
        (out / "model_file" / f"{name}-int8.lrkm").write_bytes(native.encode(int8))
        (out / "model_file" / f"{name}-lm.lrkm").write_bytes(native.encode({**entries, **native.lm_entries(lm)}))
    for name, lstm in projected():
        (out / "stack" / f"{name}.lrkm").write_bytes(native.encode(native.stack_entries(lstm)))
    rng = np.random.default_rng(0)
    for name, n in (("short", 160), ("second", 16000)):
        buf = io.BytesIO()
        sf.write(buf, rng.uniform(-0.5, 0.5, n).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
        (out / "audio" / f"{name}.wav").write_bytes(buf.getvalue())
    (out / "audio" / "raw.f32").write_bytes(rng.uniform(-1, 1, 64).astype("<f4").tobytes())
    print(f"wrote seeds to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
