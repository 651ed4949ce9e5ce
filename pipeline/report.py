"""`report.md` of a compress run and its plots: the task's metric against compression per iteration,
latency per runtime; the search curves and rank-per-layer plots of each iteration are linked from the search runs."""
import platform

from pipeline.atomic import save_png, write_text
from pipeline.bench import row_speedup
from pipeline.machine import cpu_name


def _plots(out, metric, history, base, bench):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [1.0] + [1 / h["cost_ratio"] for h in history]
    ax.plot(x, [base["metric"]] + [h["metric"] for h in history], "o-", label="kept (evaluate)")
    ax.plot(x[1:], [h["subset_metric_before_finetune"] for h in history], "x--", label="after search (subset)")
    for key, mark, label in (("metric_after_cut", "s:", "after the cut"), ("metric_after_recovery", "^:", "after recovery")):
        pts = [(xi, h[key]) for xi, h in zip(x[1:], history) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), mark, label=label)
    ax.set_xlabel("compression of the searched cost (x)")
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "wer_vs_compression.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    runs = bench["runs"]
    ax.barh([r["label"] for r in runs], [r["median_ms"] for r in runs])
    ax.invert_yaxis()
    ax.set_xlabel(f"median ms ({bench['threads']} thread)")
    fig.tight_layout()
    save_png(fig, out / "latency.png")
    plt.close(fig)


def _speedup(ref, r):
    """"2.41x (2.30-2.52)": the median and range of per-pass ratios where the bench kept its passes."""
    med, span = row_speedup(ref, r)
    return f"{med:.2f}x" + (f" ({span[0]:.2f}-{span[1]:.2f})" if span else "")


def _num(x):
    return "" if x is None else f"{x:.4f}"


def write_report(out, metric, scores, bench, history, base, stopped, cfg, final_from):
    _plots(out, metric, history, base, bench)
    target = f"{cfg.target:g}x " + ("compression" if cfg.target_compression else "speedup")
    lines = [f"# Compression report: {target} in {cfg.iterations} iteration(s)", "",
             f"Machine: {platform.machine()} ({cpu_name()}), {cfg.threads} thread(s) for search "
             f"and fine-tuning, {bench['threads']} for the benchmark.", ""]
    if stopped:
        lines += [f"**{stopped}.**", ""]
    lines += ["The final model is " + (f"iteration {final_from}'s." if final_from else
                                       f"the baseline: no iteration stayed within the {metric} tolerance."), ""]
    lines += ["## Iterations", "", f"{metric} after each stage: the search's best on its subset, then `evaluate` after the cut "
              f"({cfg.method} factorisation), after layer-wise recovery ({cfg.recover_steps} steps per module) and after "
              f"fine-tuning ({cfg.finetune_steps} steps). A stage that made it worse is undone: the iteration keeps "
              f"its best stage.", "",
              f"| iteration | target | cost / dense | subset {metric} after search | after cut | after recovery | "
              f"after fine-tuning | kept |", "|---|---|---|---|---|---|---|---|",
              f"| baseline | 1x | 1.000 | | | | | {base['metric']:.4f} |"]
    lines += [f"| {h['iteration']} | {h['target']:.2f}x | {h['cost_ratio']:.3f} | {h['subset_metric_before_finetune']:.4f} | "
              f"{_num(h.get('metric_after_cut'))} | {_num(h.get('metric_after_recovery'))} | "
              f"{_num(h.get('metric_after_finetune', h['metric']))} | {h['metric']:.4f} ({h.get('kept', 'after fine-tuning')}) |"
              for h in history]
    cer = all("cer" in s["baseline"] and "cer" in s["final"] for s in scores.values())
    lm = all("lm" in s["baseline"] and "lm" in s["final"] for s in scores.values()) and scores
    lines += ["", f"![{metric} against compression](wer_vs_compression.png)", "", f"## {metric} per split", "",
              f"| split | baseline {metric} | final {metric} | final / baseline |" + (" baseline CER | final CER |" if cer else "")
              + (f" baseline {metric} + LM | final {metric} + LM | baseline CER + LM | final CER + LM |" if lm else ""),
              "|---|---|---|---|" + ("---|---|" if cer else "") + ("---|---|---|---|" if lm else "")]
    for split, s in scores.items():
        b, f = s["baseline"]["metric"], s["final"]["metric"]
        lines.append(f"| {split} | {b:.4f} | {f:.4f} | {f / b if b else float('nan'):.3f} |" +
                     (f" {s['baseline']['cer']:.4f} | {s['final']['cer']:.4f} |" if cer else "") +
                     (" " + " | ".join(f"{s[m]['lm'][k]:.4f}" for k in ("wer", "cer") for m in ("baseline", "final"))
                      + " |" if lm else ""))
    if lm:
        fusion = next(iter(scores.values()))["final"]["lm"]["decoding"]
        lines += ["", f"Greedy decoding, and beside it beam search fused with the character LM `{fusion['lm']}` "
                  f"(beam {fusion['beam']}, LM weight {fusion['lm_weight']}, length bonus {fusion['length_bonus']}, "
                  f"length penalty {fusion['length_penalty']}; the native decoder on PyTorch's encoder states)."]
    ref = next((r for r in bench["runs"] if r["label"] == bench.get("reference")), None)
    rtf = all("rtf" in r for r in bench["runs"])
    lines += ["", "## Latency", "", f"| runtime | median ms | p90 ms |{' real-time factor |' if rtf else ''} "
              f"speedup over {bench.get('reference', 'the first row')} (range over passes) |",
              "|---|---|---|" + ("---|" if rtf else "") + "---|"]
    for r in bench["runs"]:
        speed = _speedup(ref, r) if ref else ""
        lines.append(f"| {r['label']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} |" +
                     (f" {r['rtf']:.4f} |" if rtf else "") + f" {speed} |")
    lines += ["", "![latency per runtime](latency.png)", "", "## Search curves and ranks per layer", ""]
    for h in history:
        k = h["iteration"]
        lines += [f"Iteration {k}: ![search](iter-{k}/search/search.png) ![ranks](iter-{k}/search/best_ranks.png)"]
    int8 = " and `native/model.int8.lrkm` (its int8 twin)" if (out / "native" / "model.int8.lrkm").exists() else ""
    lines += ["", "Artefacts: `final.safetensors`, `export/` (ONNX fp32, int8, .ort), `native/model.lrkm` (what the "
              f"C++ runtime runs: `lowrank_bench --model` for the recogniser, `--weights` for an LSTM stack){int8}."]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"
