"""The model's configuration: a plain dataclass with defaults, stored in every checkpoint."""
from dataclasses import asdict, dataclass, fields

from pipeline.data.vocab import TOKENS
from pipeline.errors import PipelineError


@dataclass
class ModelConfig:
    n_mels: int = 80
    conv_channels: int = 32        # two 3x3 convolutions, stride 2 in frequency
    subsampling: int = 4           # frames per encoder frame: 4 (both convolutions stride 2 in time) or 2
    enc_layers: int = 3
    enc_hidden: int = 256          # per direction
    bidirectional: bool = True     # False: a streaming (unidirectional) encoder
    att_dim: int = 128
    att_conv_channels: int = 10    # location-aware attention: conv over the previous weights
    att_conv_kernel: int = 31
    dec_layers: int = 1
    dec_hidden: int = 256
    embed_dim: int = 64
    vocab_size: int = len(TOKENS)
    dropout: float = 0.15
    ctc_weight: float = 0.3        # joint loss: ctc_weight * CTC + (1 - ctc_weight) * attention

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d, where="config"):
        if not isinstance(d, dict):
            raise PipelineError(f"{where}: model config must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PipelineError(f"{where}: unknown model config field(s) {', '.join(unknown)}")
        return cls(**d)
