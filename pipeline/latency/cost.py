"""What a rank policy costs, the number a search keeps under its budget: parameters or multiply-adds
of the searched matrices, or the latency of the model's LSTMs that a measured latency table predicts."""
from dataclasses import replace

from pipeline.errors import PipelineError
from pipeline.latency.table import at_ranks, decoder_cells, encoder_cells
from pipeline.lowrank.accounting import layer_costs
from pipeline.lowrank.factorize import layers


class CostModel:
    """Cost of a policy: parameters or MACs of the searched matrices, or the latency table's prediction
    of the LSTMs (us per encoder frame: the encoder stack, plus the decoder's LSTM at
    `steps_per_frame` output steps per encoder frame). `reference` is the all-dense cost."""

    def __init__(self, model, layer_list, kind="params", table=None, steps_per_frame=0.0):
        self.kind, self.layers, self.table, self.steps_per_frame = kind, layer_list, table, steps_per_frame
        if kind == "latency":
            if table is None:
                raise PipelineError("cost 'latency' needs a latency table (python -m pipeline latency table)")
            self.enc, self.dec = encoder_cells(model), decoder_cells(model)
            self.fixed = {l.name: l.rank for l in layers(model)}
            self.scale = table.scale(model)
        elif kind not in ("params", "macs"):
            raise PipelineError(f"cost {kind!r}: choose one of latency, params, macs")
        self.reference = self.total({l.name: None for l in layer_list})

    def total(self, policy):
        if self.kind == "latency":
            ranks = {**self.fixed, **policy}
            return self.table.lstm_us(at_ranks(self.enc, ranks), at_ranks(self.dec, ranks), self.scale,
                                      self.steps_per_frame)
        return float(sum(layer_costs(replace(l, rank=policy.get(l.name, l.rank)))[self.kind] for l in self.layers))
