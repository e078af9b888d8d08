"""Train EfficientNetV2-S + ArcFace on a TFRecord shard folder into a model folder.

Writes MODEL_DIR/model.keras, config.json, label_map.csv, history.csv and
plots/{lr,loss,topk}.png, with a checkpoint every epoch (and every
train.checkpoint_every_steps steps). Rerun with --resume after an interruption
to continue exactly where it stopped; --time-budget 8h30m stops cleanly and
saves before a Kaggle session ends. --estimate prints parameter counts and a
per-replica memory estimate instead of training.
"""

from __future__ import annotations

import argparse

from landmark_kaggle.config import add_config_arguments, load_config

COMPANION = ("--strategy", "--precision", "--time-budget")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="TFREC_DIR", help="shard folder (local or gs://) with label_map.csv")
    parser.add_argument("--out", metavar="MODEL_DIR", help="output model folder")
    add_config_arguments(parser)
    parser.add_argument("--strategy", choices=("auto", "tpu", "mirrored", "multiworker", "cpu"),
                        help="distribution strategy (default: train.strategy, auto)")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                        help="precision policy (default: train.precision, auto)")
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
        extra.append(f"train.strategy={args.strategy}")
    if args.precision:
        extra.append(f"train.precision={args.precision}")
    if args.time_budget:
        extra.append(f"train.time_budget={args.time_budget}")
    return extra


def run(args) -> int:
    from landmark_kaggle.clibase import UserError

    cfg = load_config(args.config, _overrides(args))
    if args.estimate:
        return _estimate(args, cfg)
    if not args.data or not args.out:
        raise UserError("train needs --data TFREC_DIR and --out MODEL_DIR (or --estimate)")
    from landmark_kaggle.train import parse_duration, train_model

    parse_duration(cfg.train.time_budget)  # a malformed budget fails before TensorFlow starts
    summary = train_model(args.data, args.out, cfg, resume=args.resume)
    return 0 if summary["status"] in ("complete", "time budget") else 1


def _estimate(args, cfg) -> int:
    from landmark_kaggle.clibase import UserError
    from landmark_kaggle.memory import report

    classes = args.classes
    if args.data:
        from landmark_kaggle.pipeline import read_data_label_map

        classes = classes or len(read_data_label_map(args.data))
    classes = classes or cfg.model.num_classes or 81313
    if args.replicas < 1 or cfg.train.batch_size % args.replicas:
        raise UserError(f"--replicas {args.replicas}: train.batch_size {cfg.train.batch_size} must split evenly")
    precision = cfg.train.precision if cfg.train.precision != "auto" else "float32"
    print(report(cfg, classes, cfg.train.batch_size // args.replicas, precision))
    return 0
