"""Train EfficientNetV2-S + ArcFace on a TFRecord shard folder into a model folder.

Writes MODEL_DIR/model.weights.h5, config.json, label_map.csv, history.csv and
plots/{lr,loss,topk}.png, with a checkpoint every epoch (and every
session.checkpoint_every_steps steps). Rerun with --resume after an interruption
to continue exactly where it stopped; --time-budget 8h30m stops cleanly and
saves before a Kaggle session ends. --estimate prints parameter counts and a
per-replica memory estimate instead of training.
"""

from __future__ import annotations

import argparse

from landmark_kaggle.config import PRECISIONS, STRATEGIES, add_config_arguments, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="TFREC_DIR", nargs="+",
                        help="shard folder(s) with label_map.csv, local or gs://; several folders, globs or a folder "
                             "of parts (tfrec-builder write --max-part-gb) are read as one dataset")
    parser.add_argument("--out", metavar="MODEL_DIR", help="output model folder")
    add_config_arguments(parser)
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="distribution strategy (default: runtime.strategy, auto)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="precision policy (default: runtime.precision, auto)")
    parser.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint")
    parser.add_argument("--time-budget", metavar="DURATION", help="stop and save before this much time, e.g. 8h30m")
    parser.add_argument("--estimate", action="store_true",
                        help="print parameter count and per-replica memory estimate, then exit")
    parser.add_argument("--classes", type=int, default=0,
                        help="class count for --estimate without --data (default: GLDv2's 81313)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="replicas the global batch is split over, for --estimate (TPU v3-8: 8)")


def _overrides(args) -> list[str]:
    extra = list(args.overrides)
    if args.strategy:
        extra.append(f"runtime.strategy={args.strategy}")
    if args.precision:
        extra.append(f"runtime.precision={args.precision}")
    if args.time_budget:
        extra.append(f"session.time_budget={args.time_budget}")
    return extra


def run(args) -> int:
    from landmark_kaggle.errors import UserError

    cfg = load_config(args.config, _overrides(args))
    if args.estimate:
        return _estimate(args, cfg)
    if not args.data or not args.out:
        raise UserError("train needs --data TFREC_DIR and --out MODEL_DIR (or --estimate)")
    from landmark_kaggle.train import parse_duration, train_model

    parse_duration(cfg.session.time_budget)  # a malformed budget fails before TensorFlow starts
    summary = train_model(args.data, args.out, cfg, resume=args.resume)
    return 0 if summary["status"] in ("complete", "time budget") else 1


def _estimate(args, cfg) -> int:
    from landmark_kaggle.errors import UserError
    from landmark_kaggle.memory import report

    classes = args.classes
    if args.data:
        from landmark_kaggle.pipeline import read_data_label_map

        classes = classes or len(read_data_label_map(args.data))
    classes = classes or cfg.model.num_classes or 81313
    if args.replicas < 1 or cfg.train.batch_size % args.replicas:
        raise UserError(f"--replicas {args.replicas}: train.batch_size {cfg.train.batch_size} must split evenly")
    precision = cfg.runtime.precision if cfg.runtime.precision != "auto" else "float32"
    print(report(cfg, classes, cfg.train.batch_size // args.replicas, precision))
    return 0
