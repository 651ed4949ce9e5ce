"""The native greedy attention decoder (csrc/decoder.h) against PyTorch's: the same transcripts and
step log-probabilities on real utterances, dense and factored, on every SIMD path this CPU runs."""
import copy

import numpy as np
import pytest
import torch

from pipeline import _native, native
from pipeline.lowrank import factorize
from pipeline.model.decode import DecodeConfig, greedy, max_steps
from pipeline.model.vocab import SOS

ISAS = _native.available_isas()
# Every decoder projection factored (and the CTC head, which caps the output length).
DECODER_RANKS = {"decoder.lstm.l0.ih": 24, "decoder.lstm.l0.hh": 16, "decoder.attention.key": 8,
                 "decoder.attention.query": 8, "decoder.attention.loc": 3, "decoder.out": 12, "ctc": 12}


def torch_steps(model, enc, n):
    """PyTorch's step log-probabilities (n, V) of greedy decoding, one utterance."""
    dec, mask = model.decoder, torch.ones(1, enc.shape[1], dtype=torch.bool)
    keys, state, token, out = dec.attention.key(enc), dec.init_state(enc, mask), torch.tensor([SOS]), []
    with torch.no_grad():
        for _ in range(n):
            logp, state = dec.step(token, state, keys, enc, mask)
            out.append(logp[0])
            token = logp.argmax(-1)
    return torch.stack(out).numpy()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("factored", [False, True])
def test_native_decoder_matches_torch_greedy(overfit, isa, factored):
    model, _, rows, batch, _, _ = overfit
    if factored:
        model = factorize(copy.deepcopy(model), DECODER_RANKS)
    feats, lengths = batch[0], batch[1]
    st, dec = native.stack(model.encoder), native.decoder(model, isa=isa)
    assert dec.isa == isa
    for i in range(len(rows)):
        f = feats[i, : lengths[i]]
        with torch.no_grad():
            want = greedy(model, f[None], lengths[i:i + 1])[0]
            enc = model.encode(f[None], lengths[i:i + 1])[0]
        assert native.transcribe_native(model, f, st, dec) == want
        tokens, logp = dec.greedy(enc[0].numpy(), return_logp=True)
        assert len(tokens) + 1 >= logp.shape[0] >= len(tokens)
        assert np.abs(logp - torch_steps(model, enc, logp.shape[0])).max() <= 1e-4
        assert dec.max_steps(enc[0].numpy()) == int(max_steps(model, enc, lengths.new_tensor([enc.shape[1]]),
                                                              DecodeConfig())[0])


def test_native_decoder_caps_the_output_length(overfit):
    """An untrained decoder loops; it stops at the cap PyTorch's greedy decoding uses."""
    model = copy.deepcopy(overfit[0])
    torch.nn.init.zeros_(model.decoder.out.weight)
    with torch.no_grad():
        model.decoder.out.bias.copy_(torch.arange(model.cfg.vocab_size, dtype=torch.float32))  # never EOS
    enc = torch.randn(1, 30, model.encoder.out_dim)
    dec = native.decoder(model, DecodeConfig(ctc_len_ratio=0))
    assert len(dec.greedy(enc[0].numpy())) == dec.max_steps(enc[0].numpy()) == 45  # 30 frames x 1.5


def test_native_decoder_bad_inputs_give_clear_errors(overfit):
    model = overfit[0]
    dec = native.decoder(model)
    with pytest.raises(ValueError, match="enc must be"):
        dec.greedy(np.zeros((5, model.encoder.out_dim + 1), np.float32))
    with pytest.raises(ValueError, match="enc must be"):
        dec.greedy(np.zeros((0, model.encoder.out_dim), np.float32))
    weights = {"embedding": np.zeros((31, 8), np.float32)}
    with pytest.raises(KeyError, match="missing 'lstm'"):
        _native.AttentionDecoder(weights)
    broken = copy.deepcopy(model)
    broken.decoder.out = torch.nn.Linear(10, model.cfg.vocab_size)
    with pytest.raises(ValueError, match="decoder out: shape"):
        native.decoder(broken)
