"""SVD low-rank factorisation of LSTM, GRU and Linear layers (see factorize.py, modules.py)."""
from pipeline.lowrank.accounting import cost_table, format_table
from pipeline.lowrank.factorize import (
                                        current_ranks,
                                        densify,
                                        factorize,
                                        layers,
                                        load_rank_spec,
                                        parse_rank_spec,
                                        select,
                                        uniform_ranks,
)
from pipeline.lowrank.modules import LowRankLinear, LowRankLSTM, LowRankRecurrent

__all__ = ["LowRankLSTM", "LowRankLinear", "LowRankRecurrent", "cost_table", "current_ranks", "densify", "factorize",
           "format_table", "layers", "load_rank_spec", "parse_rank_spec", "select", "uniform_ranks"]
