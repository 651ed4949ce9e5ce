"""The model family of the papers: conv subsampling, LSTM encoder, location-aware attention,
LSTM decoder over characters, and a CTC head on the encoder.

Every recurrent weight lives in an `nn.LSTM` (one per encoder layer, so each layer and direction
can get its own rank) and every projection in an `nn.Linear`: the low-rank stage factorises them.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.vocab import BLANK, EOS, SOS
from pipeline.model.config import ModelConfig


class ConvSubsampling(nn.Module):
    """Two 3x3 convolutions: (B, T, n_mels) -> (B, T', C * F'). Both stride 2 in time (T' ~ T / 4), or
    the second stride 1 in time (T' ~ T / 2, `factor` 2); both always stride 2 in frequency."""

    def __init__(self, n_mels, channels, factor=4):
        super().__init__()
        if factor not in (2, 4):
            raise ValueError(f"subsampling factor {factor}: 2 or 4")
        self.t2 = 2 if factor == 4 else 1
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, stride=(self.t2, 2)), nn.ReLU())
        self.out_dim = channels * (((n_mels - 1) // 2 - 1) // 2)

    def out_lengths(self, lengths):
        return ((lengths - 1) // 2 - 3) // self.t2 + 1  # each unpadded 3-wide convolution

    def forward(self, x, lengths):
        y = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = y.shape
        return y.permute(0, 2, 1, 3).reshape(b, t, c * f), self.out_lengths(lengths)


def reverse_padded(x, lengths):
    """Reverse each sequence of a padded (B, T, D) batch within its own length; padding stays put."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2]))


class Encoder(nn.Module):
    """Each layer is one `nn.LSTM` per direction, run on the padded batch: padding at the end cannot
    reach the valid frames of a forward pass, and the backward direction reads each sequence reversed
    within its length. (Packed sequences would force PyTorch's slow generic LSTM path on the CPU.)"""

    def __init__(self, cfg):
        super().__init__()
        self.subsample = ConvSubsampling(cfg.n_mels, cfg.conv_channels, cfg.subsampling)
        dirs = ["fwd", "bwd"] if cfg.bidirectional else ["fwd"]
        dims = [self.subsample.out_dim] + [cfg.enc_hidden * len(dirs)] * cfg.enc_layers
        self.lstms = nn.ModuleList(
            nn.ModuleDict({d: nn.LSTM(dims[i], cfg.enc_hidden, batch_first=True) for d in dirs})
            for i in range(cfg.enc_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_dim = cfg.enc_hidden * len(dirs)

    def forward(self, feats, lengths):
        x, lengths = self.subsample(feats, lengths)
        lengths = lengths.clamp(min=1, max=x.shape[1])
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(2)
        for layer in self.lstms:
            x = self.dropout(x)
            outs = [layer["fwd"](x)[0]]
            if "bwd" in layer:
                outs.append(reverse_padded(layer["bwd"](reverse_padded(x, lengths))[0], lengths))
            x = torch.cat(outs, dim=2) * valid
        return x, lengths


class LocationAttention(nn.Module):
    """Chorowski et al. 2015: energies from keys, the decoder state and a conv over the last weights."""

    def __init__(self, enc_dim, dec_dim, att_dim, conv_channels, kernel):
        super().__init__()
        self.key = nn.Linear(enc_dim, att_dim)
        self.query = nn.Linear(dec_dim, att_dim, bias=False)
        self.loc_conv = nn.Conv1d(1, conv_channels, kernel, padding=kernel // 2, bias=False)
        self.loc = nn.Linear(conv_channels, att_dim, bias=False)
        self.energy = nn.Linear(att_dim, 1)

    def forward(self, keys, enc, mask, query, prev_weights):
        loc = self.loc(self.loc_conv(prev_weights.unsqueeze(1)).transpose(1, 2))
        e = self.energy(torch.tanh(keys + self.query(query).unsqueeze(1) + loc)).squeeze(2)
        weights = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=1)
        return torch.bmm(weights.unsqueeze(1), enc).squeeze(1), weights


class Decoder(nn.Module):
    def __init__(self, cfg, enc_dim):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim + enc_dim, cfg.dec_hidden, num_layers=cfg.dec_layers, batch_first=True)
        self.attention = LocationAttention(enc_dim, cfg.dec_hidden, cfg.att_dim, cfg.att_conv_channels,
                                           cfg.att_conv_kernel)
        self.out = nn.Linear(cfg.dec_hidden + enc_dim, cfg.vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.cfg = cfg

    def init_state(self, enc, mask):
        b = enc.shape[0]
        weights = mask.float() / mask.float().sum(1, keepdim=True)
        context = enc.new_zeros(b, enc.shape[2])
        h = enc.new_zeros(self.cfg.dec_layers, b, self.cfg.dec_hidden)
        return (h, h.clone()), context, weights

    def step(self, tokens, state, keys, enc, mask):
        """One output step: previous tokens (B,) and state -> log-probs (B, V) and the new state."""
        (h, c), context, weights = state
        x = torch.cat([self.embed(tokens), context], dim=1).unsqueeze(1)
        out, (h, c) = self.lstm(x, (h, c))
        q = out.squeeze(1)
        context, weights = self.attention(keys, enc, mask, q, weights)
        logits = self.out(self.dropout(torch.cat([q, context], dim=1)))
        return torch.log_softmax(logits, dim=-1), ((h, c), context, weights)

    def forward(self, enc, mask, targets_in):
        """Teacher forcing over (B, U) input tokens; returns (B, U, V) log-probs.

        The same function as stepping through `step`, with the LSTM cell written out: the embedding's
        share of the input product is one GEMM for all steps, and each step avoids nn.LSTM's per-call
        weight re-packing (oneDNN), which cost over a third of a training step."""
        keys = self.attention.key(enc)
        (h, c), context, weights = self.init_state(enc, mask)
        lstm, e = self.lstm, self.cfg.embed_dim
        if hasattr(lstm, "dense_weights"):  # a factored LSTM: its products U V
            w = lstm.dense_weights()
        else:
            w = [(getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}"),
                  getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")) for k in range(lstm.num_layers)]
        pre = F.linear(self.embed(targets_in), w[0][0][:, :e], w[0][2])
        hs, cs, outs = list(h), list(c), []
        for u in range(targets_in.shape[1]):
            for k, (w_ih, w_hh, b) in enumerate(w):
                x = pre[:, u] + F.linear(context, w_ih[:, e:]) if k == 0 else F.linear(hs[k - 1], w_ih, b)
                i, f, g, o = (x + F.linear(hs[k], w_hh)).chunk(4, dim=1)
                cs[k] = torch.sigmoid(f) * cs[k] + torch.sigmoid(i) * torch.tanh(g)
                hs[k] = torch.sigmoid(o) * torch.tanh(cs[k])
            context, weights = self.attention(keys, enc, mask, hs[-1], weights)
            outs.append(torch.log_softmax(self.out(self.dropout(torch.cat([hs[-1], context], dim=1))), dim=-1))
        return torch.stack(outs, dim=1)


class ASRModel(nn.Module):
    # The Linears onto the vocabulary stay dense unless a rank spec names them: below full rank their
    # logits lie in a subspace that cannot separate every character (`decoder.out` at rank 16 of 31
    # alone took the shipped baseline's dev-subset WER from 0.54 to 0.99, to save 0.2% of the weights).
    keep_dense = ("ctc", "decoder.out")

    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        self.encoder = Encoder(self.cfg)
        self.ctc = nn.Linear(self.encoder.out_dim, self.cfg.vocab_size)
        self.decoder = Decoder(self.cfg, self.encoder.out_dim)

    def encode(self, feats, lengths):
        """Features (B, T, n_mels) -> encoder states (B, T', D), lengths (B,), mask (B, T')."""
        enc, lengths = self.encoder(feats, lengths)
        mask = torch.arange(enc.shape[1], device=enc.device)[None, :] < lengths[:, None]
        return enc, lengths, mask

    def ctc_log_probs(self, enc):
        return torch.log_softmax(self.ctc(enc), dim=-1)

    def outputs(self, feats, lengths, targets, target_lengths, ctc_only=False):
        """What the losses read: CTC log-probs (B, T', V) with their lengths, and (unless ctc_only)
        the teacher-forced decoder's log-probs at the valid output positions (N, V) with their
        targets (N,); targets (B, U) are padded with EOS."""
        enc, enc_lengths, mask = self.encode(feats, lengths)
        ctc_lp = self.ctc_log_probs(enc)
        if ctc_only:
            return ctc_lp, enc_lengths, None, None
        b = targets.shape[0]
        sos = torch.full((b, 1), SOS, dtype=torch.long, device=targets.device)
        dec_in = torch.cat([sos, targets], dim=1)
        dec_out = torch.cat([targets, torch.full_like(sos, EOS)], dim=1)
        valid = torch.arange(dec_out.shape[1], device=targets.device)[None, :] <= target_lengths[:, None]
        dec_out = dec_out.masked_fill(~valid, EOS)
        dec_out = dec_out.scatter(1, target_lengths[:, None], EOS)
        return ctc_lp, enc_lengths, self.decoder(enc, mask, dec_in)[valid], dec_out[valid]

    def loss(self, feats, lengths, targets, target_lengths, label_smoothing=0.1, ctc_only=False):
        """Joint CTC/attention loss. Returns (loss, parts dict).
        ctc_only: the CTC loss alone, without running the decoder (encoder pre-training)."""
        out = self.outputs(feats, lengths, targets, target_lengths, ctc_only)
        return self.loss_of(out, targets, target_lengths, label_smoothing)

    def loss_of(self, outputs, targets, target_lengths, label_smoothing=0.1):
        ctc_lp, enc_lengths, logp, gold = outputs
        ctc = F.ctc_loss(ctc_lp.transpose(0, 1), targets, enc_lengths, target_lengths, blank=BLANK,
                         reduction="mean", zero_infinity=True)
        if logp is None:
            return ctc, {"ctc": float(ctc.detach()), "att": float("nan")}
        nll = F.nll_loss(logp, gold, reduction="mean")
        att = (1 - label_smoothing) * nll - label_smoothing * logp.mean()
        w = self.cfg.ctc_weight
        return w * ctc + (1 - w) * att, {"ctc": float(ctc.detach()), "att": float(nll.detach())}
