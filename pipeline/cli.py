"""`python -m pipeline <command>`: parses arguments and calls the stage functions, nothing more."""
import argparse
import json
import sys
import tempfile
import traceback
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from export.native import NativeAsr, Precision, write_model
from export.onnx_export import export, parity
from export.runner import OnnxAsr
from pipeline import _native
from pipeline.asr_task import AsrConfig, asr_task, build_subset, calibration_rows
from pipeline.atomic import write_json, write_jsonl
from pipeline.bench import bench
from pipeline.compress import CompressConfig, compress
from pipeline.data.audio import load_audio
from pipeline.data.build import build, format_summary
from pipeline.data.features import fbank
from pipeline.data.librispeech import librispeech_rows
from pipeline.data.manifest import check_decodes, evenly_spaced, read_manifest
from pipeline.errors import PipelineError, UserCodeError
from pipeline.finetune import cached_scores, finetune
from pipeline.latency.cost import stack_latency_cost
from pipeline.latency.onnx_layers import OnnxLayerCost
from pipeline.latency.onnx_layers import validate as validate_layers
from pipeline.latency.table import PRECISIONS, LatencyTable, lstm_cells, validate, validate_stacks
from pipeline.lm_task import lm_fusion, load_lm, save_lm
from pipeline.lowrank import cost_table, factorize, format_table, layers, load_rank_spec, uniform_ranks
from pipeline.lowrank.calibration import METHODS, calibrate
from pipeline.lowrank.checkpoint import load_checkpoint, save_checkpoint, sha256
from pipeline.lowrank.factorize import energies
from pipeline.machine import cpu_name
from pipeline.model.decode import DecodeConfig, decode
from pipeline.model.evaluate import evaluate
from pipeline.model.lm import CharLM, LmConfig, bits_per_char, manifest_texts, train_lm
from pipeline.search.run import SearchConfig, search
from pipeline.task import load_task
from pipeline.train import train


def cmd_data_build(args):
    summary = build(args.preset, args.out, seed=args.seed, workers=args.workers)
    print(format_summary(summary))
    print(f"manifests: {args.out}/{{train,dev,test,test_real}}.jsonl")


def cmd_data_import_librispeech(args):
    rows = librispeech_rows(args.root)
    write_jsonl(args.out, rows)
    print(f"{args.out}: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 3600:.2f} h")


def cmd_data_check(args):
    rows = read_manifest(args.manifest)
    if args.decode:
        check_decodes(args.manifest, rows)
    print(f"{args.manifest}: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 3600:.2f} h, ok")


DEFAULT_MODEL = "assets/baseline/model.safetensors"
DEFAULT_LM = "assets/lm/lm.safetensors"


def _model_path(args, name=None):
    """args.model (or the path `name`), the shipped baseline found from any working directory."""
    name = args.model if name is None else name
    path = Path(name)
    if name == DEFAULT_MODEL and not path.exists():
        path = Path(__file__).resolve().parent.parent / DEFAULT_MODEL
    return path


def cmd_train(args):
    st = train(args.data, args.out, args.config, resume=args.resume, epochs=args.epochs,
               train_manifest=args.train_manifest, dev_manifest=args.dev_manifest)
    if st["best_wer"] is not None:  # under torchrun, rank 0 alone evaluates
        print(f"best dev WER {st['best_wer']:.3f}; checkpoints in {args.out}/best.safetensors and last.safetensors")


def _decode_config(args, fusion=None):
    """The decoding the flags ask for; with an LM (its tuned `fusion` settings), the flags left out
    take the LM's defaults."""
    f = fusion or {"beam": 1, "lm_weight": 0.0, "length_bonus": 0.0, "length_penalty": 1.0}
    pick = lambda k: f[k] if getattr(args, k) is None else getattr(args, k)  # noqa: E731
    return DecodeConfig(beam=pick("beam"), ctc_weight=args.ctc_weight, length_penalty=pick("length_penalty"),
                        decoder=args.decoder, ctc_len_ratio=args.ctc_len_ratio,
                        lm_weight=pick("lm_weight") if fusion is not None else 0.0, length_bonus=pick("length_bonus"))


def _lm(args):
    """(the --lm model or None, its fusion defaults or None)."""
    if not args.lm:
        if args.lm_weight is not None:
            raise PipelineError("--lm-weight goes with --lm")
        return None, None
    return load_lm(args.lm), lm_fusion(args.lm)


def cmd_eval(args):
    torch.set_num_threads(args.threads)
    model, cmvn, _ = load_checkpoint(_model_path(args))
    rows = read_manifest(args.manifest)
    lm, fusion = _lm(args)
    m, _ = evaluate(model, cmvn, rows, _decode_config(args, fusion), progress=not args.json, lm=lm)
    if args.json:
        print(json.dumps(m))
    else:
        print(f"WER {m['wer']:.4f} (S {m['substitutions']} D {m['deletions']} I {m['insertions']} "
              f"of {m['words']} words)  CER {m['cer']:.4f}  on {m['utterances']} utterances")


def cmd_export(args):
    lm = load_lm(args.lm) if args.lm else None
    lm_info = {"source": args.lm, "fusion": lm_fusion(args.lm)} if lm else None
    meta = export(_model_path(args), args.out, int8=args.int8, ort_format=args.ort, lowering=args.lowering, lm=lm,
                  lm_info=lm_info)
    print(f"wrote {args.out}: " + ", ".join(sorted(meta["files"].values())) + ", model.json")
    print(f"encoder max abs difference to PyTorch on a test input: {parity(_model_path(args), args.out):.2e}")
    if args.native:
        model, cmvn, _ = load_checkpoint(_model_path(args))
        write_model(Path(args.out) / "model.lrkm", model, cmvn, lm=lm)
        print(f"wrote {Path(args.out) / 'model.lrkm'}: the whole model for `lowrank_bench --model` on a device")
        if args.int8:
            path = Path(args.out) / "model.int8.lrkm"
            write_model(path, model, cmvn, precision=Precision(True, args.keep_float or ()), lm=lm)
            print(f"wrote {path}: the same with its weight matrices in int8")


def cmd_transcribe(args):
    if (args.int8 or args.keep_float) and not args.native:
        raise PipelineError("--int8 and --keep-float go with --native (onnxruntime's int8: --onnx DIR --variant int8)")
    if args.onnx:
        asr = OnnxAsr(args.onnx, variant=args.variant, threads=args.threads)
        if args.lm:
            raise PipelineError(f"--lm: an export carries its LM (export --lm); {args.onnx} "
                                + ("has one" if asr.lm is not None else "has none"))
        cfg = _decode_config(args, asr.meta.get("lm", {}).get("fusion") if asr.lm is not None else None)
        for f in args.files:
            text = asr.transcribe_file(f, beam=cfg.beam, decoder=cfg.decoder, lm_weight=cfg.lm_weight,
                                       length_bonus=cfg.length_bonus, length_penalty=cfg.length_penalty)
            print(f"{f}\t{text}", flush=True)
        return

    torch.set_num_threads(args.threads)
    model, cmvn, _ = load_checkpoint(_model_path(args))
    lm, fusion = _lm(args)
    cfg = _decode_config(args, fusion)
    if args.native:
        if cfg.decoder != "attention" or cfg.ctc_weight:
            raise PipelineError("--native decodes with the attention decoder, without CTC rescoring: drop "
                                "--decoder ctc and --ctc-weight")
        asr = NativeAsr(model, cmvn, cfg, precision=Precision(args.int8, args.keep_float or ()), lm=lm)
        for f in args.files:
            print(f"{f}\t{asr.transcribe(*load_audio(f, allow_multichannel=True))}", flush=True)
        return
    for f in args.files:
        audio, sr = load_audio(f, allow_multichannel=True)
        feats = cmvn(fbank(audio, sr)).unsqueeze(0)
        lengths = torch.tensor([feats.shape[1]])
        text = decode(model, feats, lengths, cfg, lm)[0]
        print(f"{f}\t{text}", flush=True)


def cmd_factorize(args):
    path = _model_path(args)
    model, cmvn, header = load_checkpoint(path)
    if (args.ranks is None) == (args.uniform is None):
        raise PipelineError("give exactly one of --ranks R.json and --uniform FRACTION")
    if args.uniform is not None and not 0 < args.uniform <= 1:
        raise PipelineError(f"--uniform: fraction {args.uniform} is outside (0, 1]")
    ranks = (load_rank_spec(args.ranks, model, snap=not args.no_snap) if args.ranks
             else uniform_ranks(model, args.uniform, snap=not args.no_snap))
    covs, record = None, {"method": "svd"}
    if args.method == "whitened":
        torch.set_num_threads(args.threads)
        rows = calibration_rows(args.data, args.calibration)
        calib = calibrate(model, [l for l in layers(model) if l.name in ranks],
                          lambda: evaluate(model, cmvn, rows, progress=False))
        covs, record = calib.covs, calib.record()
        for name, why in calib.fallback.items():
            print(f"{name}: plain SVD ({why})")
    factorize(model, ranks, covs=covs)
    energy = {**header.get("energy", {}), **energies(model)}
    provenance = {"parent_sha256": sha256(path), "parent": str(path), "made_by": "factorize",
                  "rank_spec": args.ranks or f"uniform {args.uniform}", "factorisation": record,
                  "data_manifests": header.get("provenance", {}).get("data_manifests", [])}
    save_checkpoint(args.out, model, cmvn, provenance, {}, energy)
    rows, totals = cost_table(model, energy)
    print(format_table(rows, totals))
    print(f"wrote {args.out}")


def cmd_inspect(args):
    model, _, header = load_checkpoint(args.checkpoint)
    rows, totals = cost_table(model, header.get("energy"))
    if args.json:
        print(json.dumps({"layers": rows, "totals": totals, "metrics": header.get("metrics", {}),
                          "provenance": header.get("provenance", {})}, indent=2))
        return
    print(format_table(rows, totals))
    for key in ("metrics", "provenance"):
        if header.get(key):
            print(f"{key}: {json.dumps(header[key])}")


def cmd_bench(args):
    if args.precision == "int8" and args.runtime == "torch":
        raise PipelineError("--precision int8: the native runtime or onnxruntime, not torch")
    runtime = args.runtime + ("-int8" if args.precision == "int8" else "")
    r = bench(_model_path(args), args.manifest, runtime, args.target, args.threads, args.utterances, args.reps)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "transcripts"}))
        return
    print(f"{r['runtime']} on {r['target']}{' (emulated: not for decisions)' if r['emulated'] else ''}, "
          f"{r['threads']} thread(s): {r['utterances']} utterances ({r['audio_seconds']:.1f} s of audio) in "
          f"median {r['median_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms; real-time factor {r['rtf']:.4f}"
          + (f"; peak memory {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""))


def cmd_latency(args):
    if args.task:
        return _task_latency(args)
    model, _, _ = load_checkpoint(_model_path(args))
    table = LatencyTable(args.target, args.runtime, frames=args.frames, reps=args.reps, precision=args.precision)
    n = table.measure(model, progress=not args.json)
    if args.action == "table":
        enc = table.predict(model)
        dec = f", its decoder LSTM {table.predict(model, 1.0) - enc:.1f} us per output step" if args.runtime == "native" else ""
        print(f"{table.path}: {len(table.entries)} points ({n} measured now); predicted for this model: the encoder "
              f"{enc:.1f} us per encoder frame{dec}")
        return
    pairs = validate(model, table, args.policies, args.seed, args.target, log=(lambda *_: None) if args.json else print)
    worst = max(abs(p["error"]) for p in pairs)
    result = {"target": args.target, "runtime": args.runtime, "table": str(table.path), "pairs": pairs,
              "worst_abs_error": worst, "scale": table.scale(model)}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result) if args.json else f"worst error {100 * worst:.1f}% over {len(pairs)} policies")


def _task_latency(args):
    """`latency table|validate --task`: the native table of a model's LSTM stacks, or where it has
    none the onnxruntime table of its layers; and its check."""
    task = load_task(args.task, _task_args(args.task_arg))
    model = task.model
    if not lstm_cells(model):
        if args.precision != "fp32":
            raise PipelineError("latency --task --precision int8: int8 latency is the native LSTM stacks'; "
                                "this model has none (its onnxruntime table is fp32)")
        return _task_onnx_latency(args, task)
    if args.runtime != "native":
        raise PipelineError("latency --task: the table of a task's LSTM stacks is native only")
    cost = stack_latency_cost(model, task.layers(), args.target, not args.json, args.frames, args.reps, args.precision)
    if args.action == "table":
        print(f"{cost.table.path}: {len(cost.table.entries)} points; predicted for this model's LSTM stacks, "
              f"dense: {cost.reference:.1f} us per frame")
        return
    pairs = validate_stacks(model, cost.table, args.policies, args.seed, args.target,
                            log=(lambda *_: None) if args.json else print)
    worst = max(abs(p["error"]) for p in pairs)
    result = {"target": args.target, "machine": cpu_name(), "threads": 1, "runtime": "native", "task": args.task,
              "command": "python -m pipeline " + " ".join(sys.argv[1:]), "table": str(cost.table.path),
              "pairs": pairs, "worst_abs_error": worst}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result) if args.json else f"worst error {100 * worst:.1f}% over {len(pairs)} policies")


def _task_onnx_latency(args, task):
    cost = OnnxLayerCost(task.model, task.example_inputs, task.layers(), reps=args.reps)
    if args.action == "table":
        print(f"onnxruntime, this machine, 1 thread: the {len(cost.layers)} selected layers' products take "
              f"{cost.reference:.1f} us per forward pass on the example inputs, dense")
        return
    with tempfile.TemporaryDirectory() as tmp:
        pairs = validate_layers(task, cost, Path(tmp), args.policies, args.seed, args.reps,
                                log=(lambda *_: None) if args.json else print)
    worst = max(abs(p["error"]) for p in pairs)
    result = {"target": "local", "machine": cpu_name(), "threads": 1, "runtime": "onnx", "task": args.task,
              "command": "python -m pipeline " + " ".join(sys.argv[1:]), "pairs": pairs, "worst_abs_error": worst}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result) if args.json else f"worst error {100 * worst:.1f}% over {len(pairs)} policies")


def _config(cls, args):
    """A config dataclass from the arguments that name its fields (unset ones keep its defaults)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in known and v is not None})


def cmd_finetune(args):
    """More fine-tuning of a (factored) checkpoint, e.g. a `compress` run's model, then its dev WER."""
    out, data = Path(args.out), Path(args.data)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise PipelineError(f"{out}: the folder is not empty; pass --resume to continue it, or another --out")
    if args.steps < 1:
        raise PipelineError(f"--steps {args.steps}: give at least 1")
    model, cmvn, header = load_checkpoint(_model_path(args))
    teacher = load_checkpoint(_model_path(args, args.teacher))[0] if args.distill else None
    finetune(model, cmvn, read_manifest(data / "train.jsonl"), out, args.steps, args.lr, threads=args.threads,
             seed=args.seed, teacher=teacher, distill=args.distill,
             provenance={**header.get("provenance", {}), "finetuned_from": str(args.model), "more_steps": args.steps})
    rows = evenly_spaced(read_manifest(data / "dev.jsonl"), args.dev_utterances)
    dev = cached_scores(out / "dev.json", out / "model.safetensors", rows, args.threads)
    print(f"dev WER {dev['wer']:.4f} ({len(rows)} utterances); model in {out / 'model.safetensors'}")


def cmd_subset(args):
    torch.set_num_threads(args.threads)
    model, cmvn, _ = load_checkpoint(_model_path(args))
    check = build_subset(model, cmvn, read_manifest(args.manifest), args.out, args.fraction, args.policies, args.seed)
    print(f"{args.out}: {check['utterances']} of {check['of']} utterances ({check['seconds']:.0f} s); Spearman rho "
          f"{check['spearman']:.3f} over {check['policies']} random policies (full manifest against subset)")


def cmd_search(args):
    torch.set_num_threads(args.threads)
    if not Path(args.subset).exists():
        raise PipelineError(f"{args.subset}: evaluation subset not found; make it with `python -m pipeline subset`")
    task = asr_task(_model_path(args), args.data, subset=args.subset)
    r = search(task, args.out, _config(SearchConfig, args), args.resume, ray=args.ray, workers=args.workers)
    b = r["best"]
    print(f"best of {r['episodes']} episodes ({r['evaluations']} evaluations): subset {r['metric']} {b['metric']:.4f} "
          f"(dense {r['base_metric']:.4f}) at {b['cost_ratio']:.3f} of the dense {r['cost']} -> "
          f"{args.out}/best.safetensors")


def _task_args(pairs):
    """--task-arg KEY=VALUE pairs as keyword arguments; a VALUE that parses as JSON is taken as such."""
    out = {}
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise PipelineError(f"--task-arg {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_compress(args):
    if args.task:
        task = load_task(args.task, _task_args(args.task_arg))
    else:
        if args.task_arg:
            raise PipelineError("--task-arg goes with --task")
        acfg = _config(AsrConfig, args)
        if not 0.0 <= acfg.distill <= 1.0:
            raise PipelineError(f"--distill {acfg.distill}: a weight between 0 and 1")
        task = asr_task(_model_path(args), args.data, acfg, out=Path(args.out))
    r = compress(task, args.out, _config(CompressConfig, args), args.resume, ray=args.ray, workers=args.workers)
    if r is None:  # a torchrun rank other than 0
        return
    row = next((h for h in r["history"] if h["iteration"] == r["final_from"]), None)
    what = (f"{1 / row['cost_ratio']:.2f}x from iteration {row['iteration']}, {task.metric} {row['metric']:.4f}" if row
            else f"the baseline (no iteration stayed within the {task.metric} tolerance)")
    print(f"final: {what}; {r['final']}; report in {args.out}/report.md")


def cmd_lm_train(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    texts, dropped = manifest_texts(Path(args.data) / "train.jsonl")
    print(f"{args.data}/train.jsonl: {len(texts)} transcripts ({dropped} left out: they quote a reserved source)")
    model = train_lm(CharLM(LmConfig(hidden=args.hidden, layers=args.layers)), texts, args.steps, lr=args.lr,
                     seed=args.seed, progress=True)
    dev, _ = manifest_texts(Path(args.data) / "dev.jsonl")
    bpc = bits_per_char(model, dev)
    save_lm(args.out, model, {"train": {"data": str(args.data), "steps": args.steps, "lr": args.lr,
                                        "transcripts": len(texts), "left_out": dropped}, "dev_bits_per_char": bpc})
    print(f"dev bits/char {bpc:.4f}; wrote {args.out}")


def cmd_lm_score(args):
    model = load_lm(args.lm)
    for m in args.manifest:
        texts, _ = manifest_texts(m)
        print(f"{m}: {bits_per_char(model, texts):.4f} bits/char ({len(texts)} transcripts)")


def cmd_info(args):
    print(json.dumps({"build": _native.build_info(), "cpu_features": _native.cpu_features(),
                      "best_isa": _native.best_isa(), "kernel_paths": _native.available_isas()}, indent=2))


def make_parser():
    p = argparse.ArgumentParser(prog="python -m pipeline",
                                description="Compress end-to-end LSTM ASR models for on-device use.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="build the embedded speech corpus, import and check manifests")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    b = dsub.add_parser("build", help="synthesise and collect the embedded corpus (resumable)")
    b.add_argument("--preset", default="default", help="tiny | default | full (default: default)")
    b.add_argument("--out", required=True, help="corpus folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    b.set_defaults(func=cmd_data_build)
    ls = dsub.add_parser("import-librispeech", help="write a manifest for a LibriSpeech folder")
    ls.add_argument("root")
    ls.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    ls.set_defaults(func=cmd_data_import_librispeech)
    c = dsub.add_parser("check", help="validate a manifest and the audio files it names")
    c.add_argument("manifest")
    c.add_argument("--decode", action="store_true", help="also decode every audio file (mono, not empty)")
    c.set_defaults(func=cmd_data_check)

    t = sub.add_parser("train", help="train the LSTM encoder-attention-decoder ASR model (resumable)")
    t.add_argument("--data", help="corpus folder with train.jsonl, dev.jsonl (and cmvn.json)")
    t.add_argument("--train-manifest", help="any training manifest (instead of DATA/train.jsonl)")
    t.add_argument("--dev-manifest", help="any dev manifest (instead of DATA/dev.jsonl)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--config", help="JSON with optional 'model' and 'train' objects")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--epochs", type=int, help="override the number of epochs")
    t.set_defaults(func=cmd_train)

    def decode_args(q):
        q.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
        q.add_argument("--beam", type=int, help="beam size; 1 = greedy (default; with --lm: the LM's tuned beam)")
        q.add_argument("--decoder", choices=["attention", "ctc"], default="attention",
                       help="attention decoder (default) or greedy CTC on the encoder alone")
        q.add_argument("--ctc-weight", type=float, default=0.0, help="CTC weight when rescoring the beam")
        q.add_argument("--length-penalty", type=float,
                       help="beam hypotheses compared by score / (characters + 1) ** this (default 1)")
        q.add_argument("--lm", metavar="PATH", help="character LM (`lm train`, e.g. assets/lm/lm.safetensors) fused "
                                                    "into beam search; its tuned beam, weight and bonus are defaults")
        q.add_argument("--lm-weight", type=float, help="lambda of shallow fusion: score = log p_asr + lambda log p_lm "
                                                       "+ bonus per character")
        q.add_argument("--length-bonus", type=float, help="added to a beam hypothesis's score per character (default 0)")
        q.add_argument("--ctc-len-ratio", type=float, default=1.5,
                       help="attention output capped at this x the CTC best path's length + 5 (0: off)")
        q.add_argument("--threads", type=int, default=2)

    e = sub.add_parser("eval", help="WER and CER of a checkpoint on a manifest")
    decode_args(e)
    e.add_argument("--manifest", required=True)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eval)
    tr = sub.add_parser("transcribe", help="print one transcript per audio file")
    decode_args(tr)
    tr.add_argument("--onnx", metavar="DIR", help="decode with onnxruntime from an export directory instead")
    tr.add_argument("--native", action="store_true", help="run the whole model in C++ (greedy attention decoding)")
    tr.add_argument("--int8", action="store_true", help="with --native: the weight matrices in int8")
    tr.add_argument("--keep-float", nargs="+", metavar="GLOB",
                    help="with --int8: native entry names (e.g. decoder.ctc 'encoder.0.*') that stay float")
    tr.add_argument("--variant", default="fp32", choices=["fp32", "int8", "ort", "int8_ort"],
                    help="which exported files --onnx uses")
    tr.add_argument("files", nargs="+")
    tr.set_defaults(func=cmd_transcribe)

    f = sub.add_parser("factorize", help="SVD low-rank factorisation of a checkpoint at given ranks")
    f.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    f.add_argument("--ranks", help='JSON {layer: rank | fraction | "dense"}; see `inspect` for layer names')
    f.add_argument("--uniform", type=float, help="one rank fraction for every layer but the output layers")
    f.add_argument("--no-snap", action="store_true", help="do not snap ranks to multiples of 8")
    f.add_argument("--method", default="whitened", choices=METHODS,
                   help="whitened (default): the best rank-r form on the inputs each matrix sees, from decoding "
                        "--calibration train utterances of --data; svd: plain truncated SVD, no data")
    f.add_argument("--data", default="corpus/default", help="corpus folder for the calibration (default: corpus/default)")
    f.add_argument("--calibration", type=int, default=200, help="train utterances decoded for the statistics")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--out", required=True, help="factored checkpoint to write (.safetensors)")
    f.set_defaults(func=cmd_factorize)
    ins = sub.add_parser("inspect", help="per-layer ranks, parameters, MACs, bytes and energy of a checkpoint")
    ins.add_argument("checkpoint")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)

    ex = sub.add_parser("export", help="ONNX graphs (encoder, decoder step) of a checkpoint, int8 and ORT format")
    ex.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    ex.add_argument("--out", required=True, help="export directory")
    ex.add_argument("--int8", action="store_true",
                    help="also dynamically quantised int8 models (and with --native, model.int8.lrkm)")
    ex.add_argument("--keep-float", nargs="+", metavar="GLOB",
                    help="with --native --int8: native entry names (e.g. decoder.ctc 'encoder.0.*') that stay float")
    ex.add_argument("--ort", action="store_true", help="also the ORT format for mobile")
    ex.add_argument("--native", action="store_true", help="also model.lrkm, the whole model for lowrank_bench --model")
    ex.add_argument("--lm", metavar="PATH", help="also the character LM: lm_step.onnx, and inside model.lrkm")
    ex.add_argument("--lowering", default="auto", choices=["auto", "lstm_op", "scan"],
                    help="low-rank LSTM lowering; auto measures both per layer")
    ex.set_defaults(func=cmd_export)
    bn = sub.add_parser("bench", help="end-to-end latency of a fixed set of utterances on a target")
    bn.add_argument("--manifest", default="corpus/default/dev.jsonl", help="the utterances (evenly spaced)")
    bn.add_argument("--utterances", type=int, default=10)
    bn.add_argument("--threads", type=int, default=1)
    bn.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    bn.add_argument("--target", default="local", help="local, ssh://user@host[:port], adb[:serial], qemu-aarch64")
    bn.add_argument("--runtime", default="native", choices=["native", "onnx", "torch"])
    bn.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="int8: the weight matrices in int8 (native kernels; onnxruntime's dynamic quantisation)")
    bn.add_argument("--reps", type=int, default=10)
    bn.add_argument("--json", action="store_true")
    bn.set_defaults(func=cmd_bench)
    lt = sub.add_parser("latency", help="the per-layer latency table of a model's shapes on a target, and its validation")
    lt.add_argument("action", choices=["table", "validate"],
                    help="table: measure (or reuse) the latency table of the model's layer shapes; validate: predicted "
                         "against measured latency of random rank policies")
    lt.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    lt.add_argument("--task", metavar="MODULE:FACTORY", help="instead of --model: the LSTM stacks of a task's model")
    lt.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="a keyword argument of the factory")
    lt.add_argument("--target", default="local", help="local, ssh://user@host[:port], adb[:serial], qemu-aarch64")
    lt.add_argument("--runtime", default="native", choices=["native", "onnx"], help="onnx: this machine only")
    lt.add_argument("--precision", default="fp32", choices=PRECISIONS, help="the weight matrices in fp32 or int8 (native)")
    lt.add_argument("--policies", type=int, default=10)
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--frames", type=int, default=200)
    lt.add_argument("--reps", type=int, default=10)
    lt.add_argument("--out", help="also write the validation as JSON here")
    lt.add_argument("--json", action="store_true")
    lt.set_defaults(func=cmd_latency)
    sr = sub.add_parser("search", help="AutoML rank search: an agent picks every layer's rank to meet a target (resumable)")
    sr.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    sr.add_argument("--target-compression", type=float, metavar="X", help="cost (params or macs) at most dense / X")
    sr.add_argument("--target-speedup", type=float, metavar="X", help="predicted latency at most dense / X")
    sr.add_argument("--agent", default="ddpg", help="ddpg (default) | reinforce | random | uniform | greedy")
    sr.add_argument("--reward", default="wer", help="wer (default) | punish | amc; see README")
    sr.add_argument("--episodes", type=int, default=200)
    sr.add_argument("--cost", help="params | macs | latency (default: params for compression, latency for speedup)")
    sr.add_argument("--target", dest="device", default="local", help="where latency is measured (bench target)")
    sr.add_argument("--runtime", default="native", choices=["native", "onnx"], help="latency of which runtime")
    sr.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="latency with the weight matrices in fp32 or int8 (native kernels)")
    sr.add_argument("--layers", default="all", choices=["all", "lstm"], help="which matrices the agent ranks")
    sr.add_argument("--min-fraction", type=float, default=0.1, help="smallest keep fraction of a layer's rank")
    sr.add_argument("--method", default="whitened", choices=METHODS,
                    help="factorisation the policies are scored with and the result is made by (default: whitened, "
                         "calibrated on DATA/train)")
    sr.add_argument("--data", default="corpus/default", help="corpus folder whose train split calibrates --method whitened")
    sr.add_argument("--subset", default="assets/baseline/dev_subset.jsonl", help="evaluation subset manifest")
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--batch", type=int, default=4, help="episodes proposed per agent state, evaluated together")
    sr.add_argument("--ray", metavar="auto|ADDRESS", help="evaluate on a running Ray cluster")
    sr.add_argument("--workers", type=int, help="Ray workers (alone: a local Ray instance with this many CPUs)")
    sr.add_argument("--threads", type=int, default=2)
    sr.add_argument("--out", required=True, help="run folder")
    sr.add_argument("--resume", action="store_true", help="continue the search in --out")
    sr.set_defaults(func=cmd_search)
    ss = sub.add_parser("subset", help="the representative dev subset for the search, with its rank-correlation check")
    ss.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    ss.add_argument("--manifest", default="corpus/default/dev.jsonl")
    ss.add_argument("--out", required=True, help="subset manifest to write; its check goes to OUT.json")
    ss.add_argument("--fraction", type=float, default=0.12)
    ss.add_argument("--policies", type=int, default=20)
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--threads", type=int, default=2)
    ss.set_defaults(func=cmd_subset)
    cp = sub.add_parser("compress", help="iterative search and fine-tuning to a target, then export, benchmark "
                                          "and report (resumable)")
    cp.add_argument("--task", metavar="MODULE:FACTORY",
                    help="compress your own model: a function returning a pipeline.task.Task (docs/your-model.md); "
                         "default: the built-in recogniser at --model on --data")
    cp.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="a keyword argument of the factory "
                                                                             "(repeatable; VALUE as JSON where it parses)")
    cp.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default: {DEFAULT_MODEL})")
    cp.add_argument("--data", default="corpus/default", help="corpus folder (default: corpus/default)")
    cp.add_argument("--target-compression", type=float, metavar="X")
    cp.add_argument("--target-speedup", type=float, metavar="X")
    cp.add_argument("--iterations", type=int)
    cp.add_argument("--episodes", type=int, help="search episodes per iteration")
    cp.add_argument("--agent")
    cp.add_argument("--method", choices=METHODS, help="factorisation: whitened (default) or svd")
    cp.add_argument("--recover-steps", type=int, help="layer-wise recovery steps per factored module before "
                                                      "fine-tuning (default 0: off)")
    cp.add_argument("--finetune-steps", type=int)
    cp.add_argument("--distill", type=float, metavar="W",
                    help="fine-tune with this weight of distillation from the uncompressed model (default 0.5; 0: off)")
    cp.add_argument("--tolerance", type=float, help="stop when dev WER passes (1 + this) x the baseline's")
    cp.add_argument("--dev-utterances", type=int, help="dev utterances scored per iteration (default 300; 0: all)")
    cp.add_argument("--score-utterances", type=int, help="utterances per split in the final scores (default 200; 0: all)")
    cp.add_argument("--target", dest="device", help="bench target for latency (default: local)")
    cp.add_argument("--precision", choices=PRECISIONS,
                    help="int8: search with int8 latency, export and benchmark int8 beside fp32 (default fp32)")
    cp.add_argument("--lm", metavar="PATH", help="the final scores also decode with this character LM fused into beam "
                                                 "search (default: assets/lm/lm.safetensors; '' for greedy only)")
    cp.add_argument("--threads", type=int)
    cp.add_argument("--ray", metavar="auto|ADDRESS", help="the searches evaluate on a running Ray cluster")
    cp.add_argument("--workers", type=int, help="Ray workers for the searches (alone: a local Ray instance)")
    cp.add_argument("--out", default="runs/compress", help="run folder (default: runs/compress)")
    cp.add_argument("--resume", action="store_true")
    cp.set_defaults(func=cmd_compress)
    ft = sub.add_parser("finetune", help="fine-tune a (factored) checkpoint further on DATA/train, then score dev "
                                          "(resumable)")
    ft.add_argument("--model", required=True, help="checkpoint, e.g. a compress run's final.safetensors")
    ft.add_argument("--data", default="corpus/default", help="corpus folder (default: corpus/default)")
    ft.add_argument("--steps", type=int, required=True)
    ft.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4; compress uses 3e-4 "
                                                            "right after a cut)")
    ft.add_argument("--distill", type=float, default=0.0, metavar="W", help="weight of distillation from --teacher")
    ft.add_argument("--teacher", default=DEFAULT_MODEL, help=f"the uncompressed model (default: {DEFAULT_MODEL})")
    ft.add_argument("--dev-utterances", type=int, default=300, help="dev utterances scored (default 300; 0: all)")
    ft.add_argument("--threads", type=int, default=2)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--out", required=True, help="run folder")
    ft.add_argument("--resume", action="store_true")
    ft.set_defaults(func=cmd_finetune)
    lm = sub.add_parser("lm", help="the character language model for shallow fusion: train, score")
    lsub = lm.add_subparsers(dest="lm_command", required=True, metavar="SUBCOMMAND")
    lmt = lsub.add_parser("train", help="train a character LSTM LM on DATA/train's transcripts")
    lmt.add_argument("--data", default="corpus/default", help="corpus folder (default: corpus/default)")
    lmt.add_argument("--hidden", type=int, default=384)
    lmt.add_argument("--layers", type=int, default=2)
    lmt.add_argument("--steps", type=int, default=1500, help="batches of 64 transcripts")
    lmt.add_argument("--lr", type=float, default=3e-3)
    lmt.add_argument("--seed", type=int, default=0)
    lmt.add_argument("--threads", type=int, default=2)
    lmt.add_argument("--out", required=True, help="language model file to write (.safetensors)")
    lmt.set_defaults(func=cmd_lm_train)
    lms = lsub.add_parser("score", help="bits per character of a language model on manifests' transcripts")
    lms.add_argument("--lm", default=DEFAULT_LM, help=f"language model (default: {DEFAULT_LM})")
    lms.add_argument("manifest", nargs="+")
    lms.set_defaults(func=cmd_lm_score)
    info = sub.add_parser("info", help="native extension build info and detected CPU features")
    info.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="rdata")
    try:
        args.func(args)
    except PipelineError as e:
        if isinstance(e, UserCodeError) and e.__cause__ is not None:
            traceback.print_exception(e.__cause__, file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    _leave_process_group()
    return 0


def _leave_process_group():
    """Under torchrun, leaves the process group once the command is done. Left to the interpreter's
    teardown, gloo's threads can abort a rank that finished early (SIGABRT, 'terminate called without
    an active exception': compress's rank 1, while rank 0 writes the report). Not after an error, when
    another rank may still wait in a collective."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
