"""What a rank policy costs, the number a search keeps under its budget: parameters or multiply-adds
of the searched matrices, or the latency of the model's LSTMs that a measured latency table predicts:
the recogniser's encoder and decoder (its task's hook), or the native LSTM stacks of any model."""
from dataclasses import replace

from pipeline.errors import PipelineError
from pipeline.latency.table import LatencyTable, at_ranks, decoder_cells, encoder_cells, lstm_cells
from pipeline.lowrank.accounting import layer_costs
from pipeline.lowrank.factorize import layers


class CostModel:
    """Cost of a policy: parameters or MACs of the searched matrices, or the latency table's prediction
    of the LSTMs (us per encoder frame: the encoder stack, plus the decoder's LSTM at
    `steps_per_frame` output steps per encoder frame). `reference` is the all-dense cost."""

    def __init__(self, model, layer_list, kind="params", table=None, steps_per_frame=0.0, cells=None):
        """cells: the LSTM cells whose latency counts (default: the recogniser's encoder and decoder,
        with the table's calibration); for any other model `lstm_cells(model)`, uncalibrated."""
        self.kind, self.layers, self.table, self.steps_per_frame = kind, layer_list, table, steps_per_frame
        if kind == "latency":
            if table is None:
                raise PipelineError("cost 'latency' needs a latency table (python -m pipeline latency table)")
            if cells is None:
                self.enc, self.dec, self.scale = encoder_cells(model), decoder_cells(model), table.scale(model)
            else:
                self.enc, self.dec, self.scale = cells, [], 1.0
            self.fixed = {l.name: l.rank for l in layers(model)}
        elif kind not in ("params", "macs"):
            raise PipelineError(f"cost {kind!r}: choose one of latency, params, macs")
        self.reference = self.total({l.name: None for l in layer_list})

    def total(self, policy):
        if self.kind == "latency":
            ranks = {**self.fixed, **policy}
            return self.table.lstm_us(at_ranks(self.enc, ranks), at_ranks(self.dec, ranks), self.scale,
                                      self.steps_per_frame)
        return float(sum(layer_costs(replace(l, rank=policy.get(l.name, l.rank)))[self.kind] for l in self.layers))


def stack_latency_cost(model, layer_list, target="local", progress=True, frames=200, reps=10, precision="fp32"):
    """The latency cost of any model: its native LSTM stacks' cells in us per frame (each stack counted
    per frame of its own input), from the native latency table of `target`, measured where missing."""
    cells = lstm_cells(model)
    if not cells:
        raise PipelineError("--cost latency: the model has no LSTM stack without projections, which the native "
                            "latency table measures; search it by params or macs")
    table = LatencyTable(target, "native", frames=frames, reps=reps, precision=precision)
    table.measure_shapes(sorted({(inp, h, "utterance") for _, inp, h in cells}), progress)
    return CostModel(model, layer_list, "latency", table, cells=cells)
