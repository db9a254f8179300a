"""Command line: `python -m jtcse_lib {evaluate,transfer,mteb,train,export,pipeline,config,plan,doctor,download-data}`.

See `--help` of each command.

Errors the user can fix print one line on stderr (cause and fix) and exit with status 2; `--debug` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError, JtcseError


def _model_args(args) -> None:
    """A run folder stands for its best/ model wherever a model folder is expected (--model, --init, --teacher);
    one that is still being trained is refused (its best/ is the best so far, not the run's model) unless
    --while-training asks for that."""
    from .backbones import model_folder
    from .files import lock_holder, writer_lock

    def usable(model: str) -> str:
        path = Path(model).expanduser()
        run = path.parent if path.name == "best" else path
        if not getattr(args, "while_training", False) and (holder := lock_holder(writer_lock(run))):
            raise JtcseError(f"{run} is still being trained ({holder}): its best/ is the best model so far, not the "
                             "run's result", "wait for the training to finish" + (
                                 ", or pass --while-training to use the current best" if args.command != "train"
                                 else ""))
        return model_folder(model)

    for name in ("model", "teacher", "ensemble"):
        if value := getattr(args, name, None):
            setattr(args, name, [usable(m) for m in value] if isinstance(value, list) else usable(value))
    if getattr(args, "init", None):
        args.init = [usable(m) for m in args.init]


def _check_out_file(path: str | None) -> None:
    """--out of a command that writes one file: refuse a folder or an unwritable place before any work."""
    if path is None:
        return
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder", "pass the path of a JSON file to write, e.g. results.json")
    parent = out.parent if str(out.parent) else Path(".")
    ancestor = next((p for p in [parent, *parent.parents] if p.exists()), Path("."))
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written ({ancestor} is not a writable folder)",
                          "choose a path in a writable folder")


def _encoder(args):
    """(the encoder of --model, its device), once --out and the data folder proved usable: before the model loads.
    Two --model folders or ids are a twin (their sum); --ensemble adds JTCSE-UC's external encoder with weight
    --ensemble-weight; --tokenizer serves folders released without one."""
    from .data import resolve_data_dir
    from .device import choose_device
    from .evaluate import ensemble_encoder, sentence_encoder

    _check_out_file(args.out)
    if len(args.model) > 2:
        raise ConfigError(f"--model takes one model or the two towers of a twin, not {len(args.model)}",
                          "pass one folder or id, or two (tower A and tower B); add an external model with --ensemble")
    resolve_data_dir(args.data_dir)  # a missing data folder fails before the model is loaded
    device = choose_device(args.device)
    options = dict(pooling=args.pooling, batch_size=args.batch_size, max_length=args.max_length, device=device,
                   tokenizer=args.tokenizer)
    encoder = sentence_encoder(args.model if len(args.model) > 1 else args.model[0], **options)
    if args.ensemble:
        encoder = ensemble_encoder(encoder, sentence_encoder(args.ensemble, **options), args.ensemble_weight)
    return encoder, device


def _model_record(args) -> dict:
    """What the result file says was scored."""
    record = {"model": " + ".join(map(str, args.model)), "tokenizer": args.tokenizer}
    if args.ensemble:
        record["ensemble"] = {"model": str(args.ensemble), "weight": args.ensemble_weight,
                              "formula": "(1 - weight) * model + weight * ensemble (JTCSE-UC, unnormalised)"}
    return record


def _write_result(args, result: dict) -> None:
    from .files import write_json

    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


def cmd_evaluate(args) -> int:
    import torch

    from .backbones import is_twin_dir
    from .data import STS_TASKS
    from .evaluate import evaluate_sts
    from .provenance import provenance

    encoder, device = _encoder(args)
    twin = len(args.model) == 2 or is_twin_dir(args.model[0])
    tasks, start = args.tasks or list(STS_TASKS), time.perf_counter()
    report = evaluate_sts(encoder, tasks, args.data_dir, bootstrap=args.bootstrap, seed=args.seed)
    seconds = time.perf_counter() - start
    kind = "twin (sum of the towers' embeddings)" if twin else "single encoder"
    if args.ensemble:
        kind += f", ensembled with {args.ensemble} at weight {args.ensemble_weight:g} (JTCSE-UC)"
    print(f"{' + '.join(map(str, args.model))} [{kind}], pooling={args.pooling}, SentEval protocol ('all' for "
          "STS12-16), Spearman x 100")
    print(report.table())
    _write_result(args, {
        **_model_record(args), "pooling": args.pooling, **report.to_dict(),
        "config": {"tasks": tasks, "batch_size": args.batch_size, "max_length": args.max_length,
                   "bootstrap": args.bootstrap, "seed": args.seed, "twin": bool(twin),
                   "torch_threads": torch.get_num_threads()},
        "wall_seconds": round(seconds, 1), **provenance(device)})
    return 0


def cmd_transfer(args) -> int:
    from .config import TRANSFER_TASKS
    from .provenance import provenance
    from .transfer import evaluate_transfer

    encoder, device = _encoder(args)
    start = time.perf_counter()
    report = evaluate_transfer(encoder, args.tasks or list(TRANSFER_TASKS), args.data_dir, kfold=args.kfold,
                               n_jobs=args.jobs)
    print(f"{' + '.join(map(str, args.model))}, pooling={args.pooling}: SentEval transfer tasks, test accuracy (dev "
          "or CV accuracy beside)")
    print(report.table())
    _write_result(args, {**_model_record(args), "pooling": args.pooling, **report.to_dict(),
                         "wall_seconds": round(time.perf_counter() - start, 1), **provenance(device)})
    return 0


def cmd_train(args) -> int:
    from . import distributed
    from .config import TWIN_STAGES, RunConfig, load_profile, with_overrides
    from .files import read_json
    from .train import Trainer

    if args.config:  # the resolved configuration a launcher wrote (the run cache under torchrun)
        config = with_overrides(RunConfig(**read_json(args.config, "configuration")), args.set)
    else:
        config = load_profile(args.profile, args.set)
    if (args.nproc or config.nproc) > 1 and not distributed.launched():
        return distributed.launch(args.nproc or config.nproc, args.argv)
    twin, init = args.stage in TWIN_STAGES, args.init
    if init:
        if len(init) != (2 if twin else 1):
            raise ConfigError(f"--init takes {'two folders (tower A, tower B)' if twin else 'one folder'} for stage "
                              f"{args.stage}", "pass --init DIR_A DIR_B, e.g. two simcse_a / simcse_b runs" if twin
                              else "pass --init DIR, e.g. a simcse run")
        init = tuple(init) if twin else init[0]
    main = True
    try:
        trainer = Trainer(config, args.stage, args.out, init=init, teacher=args.teacher, data_dir=args.data_dir,
                          device=args.device, restart=args.restart)
        main = distributed.is_main()  # asked before cleanup(), after which every process looks like rank 0
        result = trainer.run()
    except JtcseError as e:
        if distributed.active():  # say which rank; torchrun then stops the others
            e.args = (f"[rank {distributed.rank()}] {e.args[0]}",)
        raise
    finally:
        distributed.cleanup()
    if main:
        print(f"{args.stage}: best STS-B dev {result.best_dev:.2f} at step {result.best_step} of {result.steps}; "
              f"best model in {result.best_dir} ({result.wall_seconds:.0f} s)")
    return 0


def cmd_export(args) -> int:
    from . import export
    from .backbones import is_twin_dir

    twin, card, out = is_twin_dir(args.model), export.card_from_run(args.model), Path(args.out)
    if twin and args.format == "sentence-transformers":
        out = export.export_twin(args.model, out, max_seq_length=args.max_seq_length, card=card,
                                 overwrite=args.overwrite)
    elif twin:
        for tower in ("tower_a", "tower_b"):
            export.export_hf(Path(args.model) / tower, out / tower, card=card, overwrite=args.overwrite)
    elif args.format == "sentence-transformers":
        out = export.export_sentence_transformers(args.model, out, pooling=args.pooling,
                                                  max_seq_length=args.max_seq_length, card=card,
                                                  overwrite=args.overwrite)
    else:
        out = export.export_hf(args.model, out, card=card, overwrite=args.overwrite)
    print(f"exported {args.model} as {args.format}{' (twin)' if twin else ''} to {out}")
    return 0


def cmd_pipeline(args) -> int:
    from .pipeline import run_pipeline

    run_pipeline(args.profile, start=args.start, only=args.only, overrides=args.set or None)
    return 0


def cmd_mteb(args) -> int:
    from .mteb_adapter import main_scores, run_mteb

    result = run_mteb(args.model, args.tasks, args.pooling, args.out, batch_size=args.batch_size,
                      max_length=args.max_length, device=args.device, languages=args.languages,
                      overwrite=args.overwrite, tokenizer=args.tokenizer)
    for task, score in main_scores(result).items():
        print(f"{task}: {score:.2f}")
    print(f"MTEB result files under {Path(args.out) / 'results'}")
    return 0


def cmd_config(args) -> int:
    from .config import STAGES, load_profile

    config = load_profile(args.profile, args.set)
    if args.stage:
        resolved = {k: v for k, v in config.for_stage(args.stage).to_dict().items() if k not in STAGES}
        print(json.dumps({"stage": args.stage, **resolved}, indent=2))
    else:
        print(json.dumps(config.to_dict(), indent=2))
    return 0


def cmd_plan(args) -> int:
    from .config import load_profile
    from .plan import plan_report

    print(plan_report(load_profile(args.profile, args.set), args.data_dir))
    return 0


def cmd_doctor(args) -> int:
    from .doctor import main_report

    text, code = main_report(args.profile, args.set or None, args.data_dir)
    print(text)
    return code


def cmd_download_data(args) -> int:
    from .data import download_data

    dest = download_data(args.dest, full_corpus=not args.no_corpus)
    print(f"data in {dest}; point the project at it with: export JTCSE_DATA_DIR={dest}")
    return 0


def _int_at_least(low: int):
    """An argparse type: an integer >= low (argparse turns the ValueError into a one-line usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .config import STAGES, TRANSFER_TASKS
    from .data import STS_TASKS
    from .evaluate import POOLINGS

    parser = argparse.ArgumentParser(prog="python -m jtcse_lib", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    shared = {  # the options several commands take, each as every one of them takes it
        "--pooling": dict(choices=POOLINGS, default="cls"),
        "--batch-size": dict(type=_int_at_least(1), default=128),
        "--max-length": dict(type=_int_at_least(2), default=None, help="truncate sentences (default: the model's "
                                                                       "limit)"),
        "--data-dir": dict(default=None, help="data folder (default: $JTCSE_DATA_DIR, else the shipped data)"),
        "--set": dict(nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                      help="override config keys (stage.key=value for one stage)"),
        "--while-training": dict(action="store_true",
                                 help="use a run folder that is still training (its best model so far)"),
    }

    def command(name: str, func, help: str, *options: str):
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        for option in options:
            p.add_argument(option, **shared[option])
        return p

    def scored_model(p, what: str) -> None:  # evaluate and transfer: a model, a twin as two, an ensemble
        p.add_argument("--model", required=True, nargs="+", metavar="MODEL",
                       help=f"{what}; two of them are a twin given as its two towers (their embeddings summed)")
        p.add_argument("--tokenizer", default=None,
                       help="where the tokenizer comes from when the model folders hold none (the authors' "
                            "released encoders: e.g. bert-base-uncased)")
        p.add_argument("--ensemble", default=None, metavar="MODEL",
                       help="JTCSE-UC: add this encoder, (1 - w) * model + w * ensemble, unnormalised")
        p.add_argument("--ensemble-weight", type=float, default=0.7, metavar="W",
                       help="w of --ensemble (default: the authors' 0.7)")

    ev = command("evaluate", cmd_evaluate, "SentEval STS evaluation (seven tasks) of an encoder or a twin folder",
                 "--pooling", "--batch-size", "--max-length", "--data-dir", "--while-training")
    scored_model(ev, "'minilm', a model folder, a twin folder (tower_a/, tower_b/), a run folder or a Hub id")
    ev.add_argument("--tasks", nargs="+", choices=STS_TASKS, metavar="TASK",
                    help=f"subset of {' '.join(STS_TASKS)} (default: all seven)")
    ev.add_argument("--bootstrap", type=_int_at_least(0), default=0, help="resamples for 95%% intervals (0: none)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    ev.add_argument("--out", default=None, help="write the result JSON here")
    ev.add_argument("--device", default=None, help="auto (default: CUDA when usable, else the CPU, said on stderr), "
                    "cpu, cuda or cuda:N")

    tr = command("train", cmd_train, f"train one stage ({', '.join(STAGES)}); resumes if interrupted",
                 "--set", "--data-dir")
    tr.add_argument("--stage", required=True, choices=STAGES)
    tr.add_argument("--profile", default="smoke", help="params/<profile>.yaml (smoke, cpu, paper)")
    tr.add_argument("--out", required=True, help="run folder: checkpoint/, best/, metrics.jsonl, result.json")
    tr.add_argument("--init", nargs="+", metavar="DIR",
                    help="start from: one encoder (simcse_a/b, distill) or two towers A B (tncse, jtcse)")
    tr.add_argument("--teacher", default=None, help="distill: a trained twin folder (tower_a/, tower_b/)")
    tr.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the profile's `device`; "
                    "`paper` asks for cuda and stops without a usable GPU)")
    tr.add_argument("--nproc", type=_int_at_least(1), default=None,
                    help="processes (GPUs) to train with, via torchrun on this node (default: the profile's nproc)")
    tr.add_argument("--config", default=None, help=argparse.SUPPRESS)  # a resolved config (JSON) instead of a profile
    tr.add_argument("--restart", action="store_true",
                    help="move an existing run in --out aside (to OUT.old-<time>) and train from step 0")

    ex = command("export", cmd_export, "export a trained tower or twin for transformers / sentence-transformers",
                 "--while-training")
    ex.add_argument("--model", required=True, help="a tower folder (e.g. RUN/best) or a twin folder")
    ex.add_argument("--format", choices=("hf", "sentence-transformers"), default="sentence-transformers")
    ex.add_argument("--out", required=True)
    ex.add_argument("--pooling", choices=("cls", "mean"), default="cls", help="sentence-transformers pooling")
    ex.add_argument("--max-seq-length", type=_int_at_least(2), default=None,
                    help="sentence-transformers truncation (default: the tokenizer's limit, as our evaluation)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing export folder")

    pl = command("pipeline", cmd_pipeline, "run the notebooks 01..07 in order with papermill", "--set")
    pl.add_argument("--profile", default="cpu", help="params/<profile>.yaml (smoke, cpu, paper)")
    pl.add_argument("--from", dest="start", default=None, metavar="NN", help="start at notebook NN")
    pl.add_argument("--only", nargs="+", default=None, metavar="NN", help="run only these notebooks")

    tf = command("transfer", cmd_transfer, "SentEval's transfer tasks (MR, CR, SUBJ, MPQA, SST-2, TREC, MRPC)",
                 "--pooling", "--batch-size", "--max-length", "--data-dir", "--while-training")
    scored_model(tf, "as for evaluate: minilm, a tower/twin/run folder or a Hub id")
    tf.add_argument("--tasks", nargs="+", choices=TRANSFER_TASKS, metavar="TASK",
                    help=f"subset of {' '.join(TRANSFER_TASKS)} (default: all seven)")
    tf.add_argument("--kfold", type=_int_at_least(2), default=10, help="SentEval's folds (default 10)")
    tf.add_argument("--jobs", type=int, default=1, help="processes fitting the classifiers (-1: one per core)")
    tf.add_argument("--out", default=None, help="write the result JSON here")
    tf.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (as for evaluate)")

    mt = command("mteb", cmd_mteb, "MTEB tasks for a twin, a tower or a backbone (needs .[mteb] and the Hub)",
                 "--pooling", "--batch-size", "--max-length", "--while-training")
    mt.add_argument("--model", required=True, help="as for evaluate: a twin/tower/run folder, minilm or a Hub id")
    mt.add_argument("--tokenizer", default=None, help="as for evaluate: for folders released without one")
    mt.add_argument("--tasks", nargs="+", required=True, help="MTEB task or benchmark names, e.g. STS22.v2")
    mt.add_argument("--device", default=None)
    mt.add_argument("--languages", nargs="+", default=None, help="keep these languages of multilingual tasks")
    mt.add_argument("--out", default="results/mteb", help="MTEB's result folder (default: results/mteb)")
    mt.add_argument("--overwrite", action="store_true", help="re-run tasks whose results exist")

    cf = command("config", cmd_config, "print a profile's resolved settings as JSON (of one stage with --stage)",
                 "--set")
    cf.add_argument("--profile", default="smoke")
    cf.add_argument("--stage", choices=STAGES, default=None, help="the settings this stage trains with")

    pn = command("plan", cmd_plan, "what a profile will train, and its cost, without training", "--set", "--data-dir")
    pn.add_argument("--profile", default="cpu")

    dr = command("doctor", cmd_doctor, "pre-flight check before a long run: torch/CUDA, GPUs, backbone and Hub, data, "
                 "disk against the plan, packages; exit 2 with the fix for each failing line", "--set", "--data-dir")
    dr.add_argument("--profile", default="cpu")

    dl = command("download-data", cmd_download_data, "fetch SentEval and Wiki1M from the Hugging Face Hub")
    dl.add_argument("--dest", default="data-full", help="folder to write (default: ./data-full)")
    dl.add_argument("--no-corpus", action="store_true", help="SentEval only, without the 1M-sentence corpus")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _model_args(args)
        return args.func(args)
    except JtcseError as e:
        if args.debug:
            raise
        print(f"{'stopped' if e.exit_code == 130 else 'error'}: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system refused (permissions, full disk, a path of the wrong kind)
        if args.debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}. Fix: check that path, its permissions and the free disk space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
