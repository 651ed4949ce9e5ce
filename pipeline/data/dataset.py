"""Utterances as model inputs: features with CMVN (and, for training, speed perturbation and
SpecAugment), batched by total duration so that a batch holds about the same audio."""
import numpy as np
import torch

from pipeline.data.features import SpecAugment, file_fbank
from pipeline.data.vocab import EOS, encode


class SpeechDataset(torch.utils.data.Dataset):
    def __init__(self, rows, cmvn, speeds=(1.0,), specaugment=False, seed=0):
        self.rows, self.cmvn, self.speeds, self.seed = rows, cmvn, speeds, seed
        self.specaugment = SpecAugment() if specaugment else None
        self.epoch = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        speed = float(self.speeds[rng.integers(len(self.speeds))])
        feats = self.cmvn(file_fbank(r["audio_filepath"], speed_factor=speed))
        if self.specaugment is not None:
            torch.manual_seed(int(rng.integers(2**31)))
            feats = self.specaugment(feats)
        return feats, torch.tensor(encode(r["text"]), dtype=torch.long)


def collate(batch):
    feats, targets = zip(*batch)
    lengths = torch.tensor([f.shape[0] for f in feats])
    target_lengths = torch.tensor([t.shape[0] for t in targets])
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    y = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=EOS)
    return x, lengths, y, target_lengths


def duration_batches(rows, batch_seconds, max_batch=64, seed=None, epoch=0):
    """Index lists of batches of similar duration, each about `batch_seconds` of audio in total
    (padding counted). Shuffled by (seed, epoch) when a seed is given, else in duration order."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["duration"])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * rows[i]["duration"] > batch_seconds or len(cur) == max_batch:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    if seed is not None:
        np.random.default_rng([seed, epoch]).shuffle(batches)
    return batches
