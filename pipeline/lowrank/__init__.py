"""SVD low-rank factorisation of LSTM and Linear layers (see factorize.py, modules.py)."""
from pipeline.lowrank.accounting import cost_table, format_table
from pipeline.lowrank.factorize import current_ranks, factorize, layers, load_rank_spec, parse_rank_spec, uniform_ranks
from pipeline.lowrank.modules import LowRankLinear, LowRankLSTM

__all__ = ["LowRankLSTM", "LowRankLinear", "cost_table", "current_ranks", "factorize", "format_table", "layers",
           "load_rank_spec", "parse_rank_spec", "uniform_ranks"]
