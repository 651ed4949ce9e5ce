"""Small third-party-style models and tasks for the tests of the task API (`--task toy:good` with
this folder on PYTHONPATH). The metric is the mean squared error to noisy copies of the uncompressed
model's outputs (so the uncompressed model scores above zero)."""
import torch
from torch import nn

from pipeline.task import Task


class Toy(nn.Module):
    """Every compressible type: a GRU, a projected bidirectional LSTM, two cells and Linears."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 48)
        self.gru = nn.GRU(48, 64, batch_first=True)
        self.lstm = nn.LSTM(64, 64, num_layers=2, bidirectional=True, proj_size=32, batch_first=True)
        self.cell = nn.LSTMCell(64, 64)
        self.gcell = nn.GRUCell(64, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        y, _ = self.gru(torch.relu(self.inp(x)))
        y, _ = self.lstm(y)
        h, _ = self.cell(y[:, -1])
        return self.head(self.gcell(h))


def _targets(reference, x):
    with torch.no_grad():
        want = reference(x)
    return want + 0.1 * want.std() * torch.randn(want.shape, generator=torch.Generator().manual_seed(1))


def _distance(reference, x):
    want = _targets(reference, x)
    return lambda m: float((m.eval()(x) - want).pow(2).mean() / want.pow(2).mean())


def _distill(reference, x):
    def finetune(model, steps):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        want = _targets(reference, x)
        model.train()
        for _ in range(steps):
            loss = (model(x) - want).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return finetune


def good(**overrides):
    torch.manual_seed(0)
    model = Toy().eval()
    x = torch.randn(16, 20, 12)
    fields = dict(model=model, evaluate=_distance(model, x), evaluate_subset=_distance(model, x[:4]),
                  finetune=_distill(model, x), calibrate=lambda m: m(x), example_inputs=(x[:1],),
                  metric="relative MSE", name="toy",
                  exclude=["head"])
    fields.update(overrides)
    return Task(**fields)


def nan_metric():
    return good(evaluate=lambda m: float("nan"))


def raising_metric():
    def evaluate(model):
        raise RuntimeError("the user's metric broke")
    return good(evaluate=evaluate, evaluate_subset=None)


def no_layers():
    return good(model=nn.Sequential(nn.ReLU()), exclude=[])


def bad_inputs():
    return good(example_inputs=(torch.randn(1, 20, 7),))


def bad_glob():
    return good(include=["encoder.*"])


class Tagger(nn.Module):
    """A bidirectional LSTM tagger: the LSTM stacks the native latency table measures."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(16, 128, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(256, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def tagger():
    torch.manual_seed(0)
    model = Tagger().eval()
    x = torch.randn(8, 30, 16)
    return good(model=model, evaluate=_distance(model, x), evaluate_subset=None, finetune=_distill(model, x),
                calibrate=lambda m: m(x), example_inputs=(x[:1],), name="tagger")


def mlp():
    """Linears wide enough that their factors are faster in onnxruntime: a latency budget without LSTMs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval()
    x = torch.randn(64, 256)
    return good(model=model, evaluate=_distance(model, x), evaluate_subset=None, finetune=_distill(model, x),
                calibrate=lambda m: m(x), example_inputs=(x,), exclude=[], name="mlp")
