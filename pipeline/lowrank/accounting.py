"""What a set of ranks costs: parameters, multiply-adds per step, weight bytes, energy kept."""
from pipeline.lowrank.factorize import layers


def layer_costs(layer, bytes_per_weight=4):
    m, n = layer.shape
    params = m * n if layer.rank is None else layer.rank * (m + n)
    return {"name": layer.name, "kind": layer.kind, "shape": [m, n], "rank": layer.rank,
            "params": params, "dense_params": m * n, "macs": params, "bytes": params * bytes_per_weight}


def cost_table(model, energy=None):
    """Per-layer rows and totals. `macs` counts multiply-adds per step of that layer (one encoder
    frame for encoder LSTMs, one output token for the decoder), which equals its weight count."""
    energy = energy or {}
    rows = [dict(layer_costs(l), energy=energy.get(l.name, 1.0 if l.rank is None else None)) for l in layers(model)]
    lstm = [r for r in rows if r["kind"].startswith("lstm")]
    total_params = sum(p.numel() for p in model.parameters())
    compressible_now = sum(r["params"] for r in rows)
    compressible_dense = sum(r["dense_params"] for r in rows)
    other = total_params - compressible_now
    return rows, {
        "lstm_params": sum(r["params"] for r in lstm),
        "lstm_dense_params": sum(r["dense_params"] for r in lstm),
        "lstm_compression": sum(r["dense_params"] for r in lstm) / max(1, sum(r["params"] for r in lstm)),
        "model_params": total_params,
        "model_dense_params": other + compressible_dense,
        "model_compression": (other + compressible_dense) / total_params,
        "bytes": total_params * 4,
    }


def format_table(rows, totals):
    head = f"{'layer':<34} {'shape':>11} {'rank':>6} {'params':>10} {'MACs/step':>10} {'KiB':>8} {'energy':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        e = "" if r["energy"] is None else f"{r['energy']:.4f}"
        rank = "dense" if r["rank"] is None else str(r["rank"])
        lines.append(f"{r['name']:<34} {r['shape'][0]:>5}x{r['shape'][1]:<5} {rank:>6} {r['params']:>10,} "
                     f"{r['macs']:>10,} {r['bytes'] / 1024:>8.0f} {e:>7}")
    lines.append("-" * len(head))
    lines.append(f"LSTM weights: {totals['lstm_params']:,} of {totals['lstm_dense_params']:,} dense "
                 f"({totals['lstm_compression']:.2f}x)   whole model: {totals['model_params']:,} of "
                 f"{totals['model_dense_params']:,} ({totals['model_compression']:.2f}x)")
    return "\n".join(lines)
