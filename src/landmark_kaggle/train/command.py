"""Train EfficientNetV2-S + ArcFace on a TFRecord shard folder into a model folder, on TensorFlow or JAX.

Writes MODEL_DIR/model.weights.h5, config.json, label_map.csv, history.csv and
plots/{lr,loss,topk}.png, with a checkpoint every epoch (and every
session.checkpoint_every_steps steps). Rerun with --resume after an interruption
to continue exactly where it stopped; --time-budget 8h30m stops cleanly and
saves before a Kaggle session ends. --init-from MODEL_DIR starts a new stage
from a trained model's weights at this run's image size (progressive resizing).
--estimate prints parameter counts and a per-replica memory estimate instead.

The backend is chosen before Keras is imported: runtime.backend=auto takes JAX
when a TPU is visible to JAX (Kaggle's TPU VM image), else TensorFlow.
runtime.devices=cpu:N splits this machine into N JAX host devices, a stand-in for
an N-core TPU (runtime.strategy=tpu then trains on them; without it a TPU request
fails at once when there is no TPU). --kaggle takes shards, a previous version's
checkpoint and attached backbone weights from Kaggle's input folder.
"""

from __future__ import annotations

import argparse

from landmark_kaggle.config import BACKENDS, PRECISIONS, STRATEGIES, load_config
from landmark_kaggle.config_args import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="TFREC_DIR", nargs="+",
                        help="shard folder(s) with label_map.csv, local or gs://; several folders, globs or a folder "
                             "of parts (tfrec-builder write --max-part-gb) are read as one dataset")
    parser.add_argument("--out", metavar="MODEL_DIR", help="output model folder")
    add_config_arguments(parser)
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: runtime.backend, auto: JAX when JAX sees a TPU, else TensorFlow)")
    parser.add_argument("--devices", metavar="auto|tpu|gpu|cpu|cpu:N",
                        help="JAX devices (default: runtime.devices, auto); cpu:N = N host devices, e.g. to "
                             "rehearse an 8-core TPU run on this machine")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="distribution strategy (default: runtime.strategy, auto)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="precision policy (default: runtime.precision, auto)")
    parser.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint")
    parser.add_argument("--init-from", metavar="MODEL_DIR",
                        help="start from a trained model folder's weights (another image size, margin or class "
                             "count; a classifier over other classes starts fresh)")
    parser.add_argument("--kaggle", action="store_true",
                        help="on Kaggle: shards, the previous version's output and backbone weights found among the "
                             "inputs, model folder in the working folder (--data and --out still win)")
    parser.add_argument("--time-budget", metavar="DURATION", help="stop and save before this much time, e.g. 8h30m")
    parser.add_argument("--estimate", action="store_true",
                        help="print parameter count and per-replica memory estimate, then exit")
    parser.add_argument("--classes", type=int, default=0,
                        help="class count for --estimate without --data (default: GLDv2's 81313)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="replicas the global batch is split over, for --estimate (TPU v3-8 or v5e-8: 8)")


def _overrides(args) -> list[str]:
    extra = list(args.overrides)
    for flag, key in (("backend", "runtime.backend"), ("devices", "runtime.devices"),
                      ("strategy", "runtime.strategy"), ("precision", "runtime.precision"),
                      ("time_budget", "session.time_budget")):
        if getattr(args, flag):
            extra.append(f"{key}={getattr(args, flag)}")
    return extra


def run(args) -> int:
    from landmark_kaggle.errors import UserError
    from landmark_kaggle.train.backend import choose_backend

    cfg = load_config(args.config, _overrides(args))
    if args.estimate:
        choose_backend(cfg.runtime, announce=False)
        return _estimate(args, cfg)
    if not args.kaggle and (not args.data or not args.out):
        raise UserError("train needs --data TFREC_DIR and --out MODEL_DIR (or --kaggle, or --estimate)")
    from landmark_kaggle.config_args import parse_duration

    parse_duration(cfg.session.time_budget)  # a malformed budget fails before Keras starts
    # Before anything imports Keras: it reads the backend once.
    choose_backend(cfg.runtime)
    from landmark_kaggle.train.distribute import setup_runtime

    r = cfg.runtime
    runtime = setup_runtime(r.strategy, r.precision, r.devices, backend=r.backend, announce=True,
                            require_accelerator=r.require_accelerator)  # fails fast
    data, out, resume = args.data, args.out, args.resume
    if args.kaggle:
        from landmark_kaggle.config import config_from_dict
        from landmark_kaggle.train.kaggle_session import describe, prepare_session

        session = prepare_session(cfg, out, data)
        print(describe(session), flush=True)
        data, out, resume = session.data, session.out, resume or session.resume
        if session.weights:
            cfg = config_from_dict(cfg.to_dict(), [f"model.weights={session.weights}"])
    from landmark_kaggle.train.loop import train_model

    summary = train_model(data, out, cfg, resume=resume, init_from=args.init_from, runtime=runtime)
    return 0 if summary["status"] in ("complete", "time budget") else 1


def _estimate(args, cfg) -> int:
    from landmark_kaggle.errors import UserError
    from landmark_kaggle.train.memory import report

    classes = args.classes
    if args.data:
        from landmark_kaggle.data.pipeline import read_data_label_map

        classes = classes or len(read_data_label_map(args.data))
    classes = classes or cfg.model.num_classes or 81313
    if args.replicas < 1 or cfg.train.batch_size % args.replicas:
        raise UserError(f"--replicas {args.replicas}: train.batch_size {cfg.train.batch_size} must split evenly")
    precision = cfg.runtime.precision if cfg.runtime.precision != "auto" else "float32"
    print(report(cfg, classes, cfg.train.batch_size // args.replicas, precision))
    return 0
