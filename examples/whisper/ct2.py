"""A reader of CTranslate2's model file (`model.bin`, binary version 6) into numpy arrays, and the
mapping of its Whisper layout onto openai-whisper's `Whisper` class.

The file: uint32 version; the spec's name (uint16 length with the NUL, the bytes, NUL); uint32
revision; uint32 variable count, then per variable its name, uint8 rank, uint32 dims, uint8 dtype
(0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), uint32 byte count and the bytes; then
uint32 alias count and (alias, target) name pairs. Little-endian throughout.
"""
import struct
from pathlib import Path

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class _Reader:
    def __init__(self, data, name):
        self.data, self.pos, self.name = data, 0, name

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.name}: truncated at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self):
        (n,) = self.unpack("H")
        return bytes(self.take(n)).rstrip(b"\0").decode()


def read_model_bin(path):
    """{variable name: numpy array} of a CTranslate2 model file, aliases resolved."""
    r = _Reader(memoryview(Path(path).read_bytes()), str(path))
    (version,) = r.unpack("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader reads 6")
    r.string()
    r.unpack("I")
    (count,) = r.unpack("I")
    out = {}
    for _ in range(count):
        name = r.string()
        (rank,) = r.unpack("B")
        shape = r.unpack("I" * rank)
        (dtype,) = r.unpack("B")
        (nbytes,) = r.unpack("I")
        if dtype not in DTYPES:
            raise ValueError(f"{path}: variable {name}: data type {dtype} is not supported")
        out[name] = np.frombuffer(r.take(nbytes), DTYPES[dtype]).reshape(shape)
    (aliases,) = r.unpack("I")
    for _ in range(aliases):
        alias, target = r.string(), r.string()
        out[alias] = out[target]
    return out


def _block(v, src, dst, self_attn, cross=False):
    """openai-whisper tensors of one residual block from CTranslate2's `src` scope."""
    t = {}
    qkv_w, qkv_b = v[f"{src}/{self_attn}/linear_0/weight"], v[f"{src}/{self_attn}/linear_0/bias"]
    for i, which in enumerate(("query", "key", "value")):
        t[f"{dst}.attn.{which}.weight"] = qkv_w[i * qkv_w.shape[1]:(i + 1) * qkv_w.shape[1]]
        if which != "key":  # Whisper's keys have no bias (CTranslate2 stores zeros there)
            t[f"{dst}.attn.{which}.bias"] = qkv_b[i * qkv_w.shape[1]:(i + 1) * qkv_w.shape[1]]
    t[f"{dst}.attn.out.weight"] = v[f"{src}/{self_attn}/linear_1/weight"]
    t[f"{dst}.attn.out.bias"] = v[f"{src}/{self_attn}/linear_1/bias"]
    t[f"{dst}.attn_ln.weight"] = v[f"{src}/{self_attn}/layer_norm/gamma"]
    t[f"{dst}.attn_ln.bias"] = v[f"{src}/{self_attn}/layer_norm/beta"]
    if cross:
        d = v[f"{src}/attention/linear_0/weight"].shape[0]
        kv_w, kv_b = v[f"{src}/attention/linear_1/weight"], v[f"{src}/attention/linear_1/bias"]
        t[f"{dst}.cross_attn.query.weight"] = v[f"{src}/attention/linear_0/weight"]
        t[f"{dst}.cross_attn.query.bias"] = v[f"{src}/attention/linear_0/bias"]
        t[f"{dst}.cross_attn.key.weight"] = kv_w[:d]
        t[f"{dst}.cross_attn.value.weight"], t[f"{dst}.cross_attn.value.bias"] = kv_w[d:], kv_b[d:]
        t[f"{dst}.cross_attn.out.weight"] = v[f"{src}/attention/linear_2/weight"]
        t[f"{dst}.cross_attn.out.bias"] = v[f"{src}/attention/linear_2/bias"]
        t[f"{dst}.cross_attn_ln.weight"] = v[f"{src}/attention/layer_norm/gamma"]
        t[f"{dst}.cross_attn_ln.bias"] = v[f"{src}/attention/layer_norm/beta"]
    for i, layer in ((0, 0), (1, 2)):
        t[f"{dst}.mlp.{layer}.weight"] = v[f"{src}/ffn/linear_{i}/weight"]
        t[f"{dst}.mlp.{layer}.bias"] = v[f"{src}/ffn/linear_{i}/bias"]
    t[f"{dst}.mlp_ln.weight"] = v[f"{src}/ffn/layer_norm/gamma"]
    t[f"{dst}.mlp_ln.bias"] = v[f"{src}/ffn/layer_norm/beta"]
    return t


def whisper_from_ct2(path):
    """openai-whisper's `Whisper` with the weights of a CTranslate2 Whisper model file, in float32."""
    v = read_model_bin(path)
    n_audio = sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    n_text = sum(1 for k in v if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight"))
    vocab, state = v["decoder/embeddings/weight"].shape
    dims = ModelDimensions(n_mels=v["encoder/conv1/weight"].shape[1], n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
                           n_audio_state=state, n_audio_head=int(v["encoder/num_heads"]), n_audio_layer=n_audio,
                           n_vocab=vocab, n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
                           n_text_state=state, n_text_head=int(v["decoder/num_heads"]), n_text_layer=n_text)
    t = {"encoder.conv1.weight": v["encoder/conv1/weight"], "encoder.conv1.bias": v["encoder/conv1/bias"],
         "encoder.conv2.weight": v["encoder/conv2/weight"], "encoder.conv2.bias": v["encoder/conv2/bias"],
         "encoder.positional_embedding": v["encoder/position_encodings/encodings"],
         "encoder.ln_post.weight": v["encoder/layer_norm/gamma"], "encoder.ln_post.bias": v["encoder/layer_norm/beta"],
         "decoder.token_embedding.weight": v["decoder/embeddings/weight"],
         "decoder.positional_embedding": v["decoder/position_encodings/encodings"],
         "decoder.ln.weight": v["decoder/layer_norm/gamma"], "decoder.ln.bias": v["decoder/layer_norm/beta"]}
    for i in range(n_audio):
        t.update(_block(v, f"encoder/layer_{i}", f"encoder.blocks.{i}", "self_attention"))
    for i in range(n_text):
        t.update(_block(v, f"decoder/layer_{i}", f"decoder.blocks.{i}", "self_attention", cross=True))
    model = Whisper(dims)
    model.load_state_dict({k: torch.from_numpy(np.asarray(a, np.float32)) for k, a in t.items()}, strict=True)
    return model.eval()
