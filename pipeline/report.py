"""`report.md` of a compress run and its plots: WER against compression per iteration, latency per
runtime; the search curves and rank-per-layer plots of each iteration are linked from the search runs."""
import platform

from pipeline.atomic import save_png, write_text
from pipeline.bench import row_speedup
from pipeline.machine import cpu_name


def _plots(out, history, base, bench):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [1.0] + [1 / h["cost_ratio"] for h in history]
    ax.plot(x, [base["wer"]] + [h["dev_wer"] for h in history], "o-", label="after fine-tuning (full dev)")
    ax.plot(x[1:], [h["subset_wer_before_finetune"] for h in history], "x--", label="after search (subset)")
    ax.set_xlabel("compression of the searched cost (x)")
    ax.set_ylabel("WER")
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "wer_vs_compression.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    runs = bench["runs"]
    ax.barh([r["label"] for r in runs], [r["median_ms"] for r in runs])
    ax.invert_yaxis()
    ax.set_xlabel(f"median ms for the fixed utterance set ({bench['threads']} thread)")
    fig.tight_layout()
    save_png(fig, out / "latency.png")
    plt.close(fig)


def _speedup(ref, r):
    """"2.41x (2.30-2.52)": the median and range of per-pass ratios where the bench kept its passes."""
    med, span = row_speedup(ref, r)
    return f"{med:.2f}x" + (f" ({span[0]:.2f}-{span[1]:.2f})" if span else "")


def write_report(out, scores, bench, history, base, stopped, cfg, final_from):
    _plots(out, history, base, bench)
    target = f"{cfg.target:g}x " + ("compression" if cfg.target_compression else "speedup")
    lines = [f"# Compression report: {target} in {cfg.iterations} iteration(s)", "",
             f"Machine: {platform.machine()} ({cpu_name()}), {cfg.threads} thread(s) for search "
             f"and fine-tuning, 1 for the benchmark.", ""]
    if stopped:
        lines += [f"**{stopped}.**", ""]
    lines += ["The final model is " + (f"iteration {final_from}'s." if final_from else
                                       "the baseline: no iteration stayed within the WER tolerance."), ""]
    lines += ["## Iterations", "", "| iteration | target | cost / dense | subset WER after search | dev WER after fine-tuning |",
              "|---|---|---|---|---|", f"| baseline | 1x | 1.000 | | {base['wer']:.4f} |"]
    lines += [f"| {h['iteration']} | {h['target']:.2f}x | {h['cost_ratio']:.3f} | {h['subset_wer_before_finetune']:.4f} | "
              f"{h['dev_wer']:.4f} |" for h in history]
    lines += ["", "![WER against compression](wer_vs_compression.png)", "", "## WER per split (greedy)", "",
              "| split | baseline WER | final WER | baseline CER | final CER |", "|---|---|---|---|---|"]
    lines += [f"| {split} | {s['baseline']['wer']:.4f} | {s['final']['wer']:.4f} | {s['baseline']['cer']:.4f} | "
              f"{s['final']['cer']:.4f} |" for split, s in scores.items()]
    dense = next((r for r in bench["runs"] if r["label"] == "dense (native)"), None)
    lines += ["", "## Latency, end to end (features, encoder, greedy decoding)", "",
              "| runtime | median ms | p90 ms | real-time factor | speedup over native dense (range over passes) |", "|---|---|---|---|---|"]
    for r in bench["runs"]:
        speed = _speedup(dense, r) if dense else ""
        lines.append(f"| {r['label']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['rtf']:.4f} | {speed} |")
    lines += ["", "![latency per runtime](latency.png)", "", "## Search curves and ranks per layer", ""]
    for h in history:
        k = h["iteration"]
        lines += [f"Iteration {k}: ![search](iter-{k}/search/search.png) ![ranks](iter-{k}/search/best_ranks.png)"]
    lines += ["", "Artefacts: `final.safetensors`, `export/` (ONNX fp32, int8, .ort), `native/model.lrkm` (the whole "
              "model for `lowrank_bench --model` on a device)."]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"
