"""Pairwise cosine similarity of a few images under one or more embedding backends (the poster's Table 1).

Example: tfrec-builder similarity a.jpg b.jpg c.jpg --backend keras:EfficientNetB7@b7_notop.h5
--backend mmseg:deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512@deeplab.pth
prints one row per backend and one column per image pair (I1-I2, I1-I3, I2-I3, ...).
A good cleaning backend scores views of one landmark high and unrelated images low.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations

import numpy as np

from landmark_kaggle.errors import UserError
from tfrec_builder.backends import build_backend, l2_normalize
from tfrec_builder.embed import read_image


def load_images(paths: list[str]) -> list[np.ndarray]:
    images = []
    for p in paths:
        image, why = read_image(p)
        if image is None:
            raise UserError(f"{p}: {why}")
        images.append(image)
    return images


def pair_names(n: int) -> list[str]:
    return [f"I{i + 1}-I{j + 1}" for i, j in combinations(range(n), 2)]


def cosine_pairs(vectors: np.ndarray) -> list[float]:
    unit = l2_normalize(vectors)
    sims = unit @ unit.T
    return [float(sims[i, j]) for i, j in combinations(range(len(unit)), 2)]


def similarity_table(paths: list[str], backends: list[str], *, weights: str | None = None,
                     image_size: int | None = None) -> dict:
    """``{"images": [...], "pairs": [...], "backends": {name: {pair: cosine}}}``."""
    if len(paths) < 2:
        raise UserError("similarity needs two or more images")
    images = load_images(paths)
    table = {}
    for spec in backends:
        backend = build_backend(spec, weights, image_size)
        sims = cosine_pairs(backend.embed(images))
        table[backend.name] = dict(zip(pair_names(len(paths)), sims, strict=True))
    return {"images": list(paths), "pairs": pair_names(len(paths)), "backends": table}


def format_table(result: dict) -> str:
    width = max([len("Backend")] + [len(b) for b in result["backends"]])
    lines = [f"I{i + 1} = {p}" for i, p in enumerate(result["images"])]
    lines.append(f"{'Backend':<{width}}  " + "  ".join(f"{p:>7}" for p in result["pairs"]))
    for name, sims in result["backends"].items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{sims[p]:7.3f}" for p in result["pairs"]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMG", help="two or more image files")
    parser.add_argument("--backend", action="append", required=True,
                        help="backend spec, optionally spec@weights (repeatable)")
    parser.add_argument("--weights", default=None, help="weights for backends that carry none ('none': random)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    result = similarity_table(args.images, args.backend, weights=args.weights, image_size=args.image_size)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
