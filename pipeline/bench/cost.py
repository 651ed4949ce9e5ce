"""The cost a rank search minimises, selectable: parameters of the compressible matrices, multiply-adds
per encoder frame (encoder LSTMs, the CTC head) plus per output token (decoder), or the latency of the
encoder's LSTM stack that the latency table predicts on a target (the default)."""
from pipeline.errors import PipelineError
from pipeline.lowrank.accounting import layer_costs
from pipeline.lowrank.factorize import layers

KINDS = ("latency", "params", "macs")


def model_cost(model, kind="latency", table=None):
    """One number, lower is better: parameters, MACs per step, or predicted microseconds per encoder frame."""
    if kind == "latency":
        if table is None:
            raise PipelineError("cost 'latency' needs a latency table (python -m pipeline bench table)")
        return table.predict(model)
    if kind not in KINDS:
        raise PipelineError(f"cost {kind!r}: choose one of {', '.join(KINDS)}")
    return float(sum(layer_costs(l)[kind] for l in layers(model)))


def relative_cost(model, dense_model, kind="latency", table=None):
    """The model's cost as a fraction of its dense parent's: 1 / compression or 1 / speedup."""
    return model_cost(model, kind, table) / model_cost(dense_model, kind, table)
