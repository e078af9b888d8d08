"""The embedded sample dataset: a small GLDv2-layout folder made from photos that ship with installed packages.

Nothing is downloaded. Each real photograph from scikit-image's and
scikit-learn's data folders plays one "landmark"; its images are different
views of it (random crop, scale, rotation, perspective, colour, blur, JPEG
quality), so views of one landmark differ the way photos of one building do.
Textures and documents play the non-landmark distractors. Class sizes follow a
geometric long tail that covers all four buckets of the poster's Table 2; a few
percent of the training images are injected label noise (a view of another
landmark or of a distractor under a wrong label), listed in ``noise.csv``; the
test split mixes held-out views of every landmark with non-landmark images, and
``solution.csv`` scores it as the competition would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from landmark_kaggle.data.gld import image_path
from landmark_kaggle.errors import UserError

# Photos of single scenes or objects: the "landmarks".
LANDMARK_SOURCES = [
    ("skimage", "astronaut.png"), ("skimage", "chelsea.png"), ("skimage", "coffee.png"),
    ("skimage", "rocket.jpg"), ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
    ("skimage", "motorcycle_left.png"), ("skimage", "hubble_deep_field.jpg"), ("skimage", "retina.jpg"),
    ("skimage", "ihc.png"), ("skimage", "camera.png"), ("skimage", "moon.png"),
    ("skimage", "coins.png"), ("skimage", "clock_motion.png"),
]
# Textures, documents and graphics: images that show no landmark.
DISTRACTOR_SOURCES = [
    ("skimage", "brick.png"), ("skimage", "grass.png"), ("skimage", "gravel.png"),
    ("skimage", "page.png"), ("skimage", "text.png"), ("skimage", "logo.png"),
    ("skimage", "color.png"), ("skimage", "chessboard_RGB.png"),
]
GLDV2_MAX_LANDMARK_ID = 203093


def _source_dir(package: str) -> Path:
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images"


def load_source(package: str, name: str) -> np.ndarray:
    """Read one packaged photo as a BGR uint8 array (greyscale and RGBA become 3-channel)."""
    path = _source_dir(package) / name
    # Pillow, not OpenCV: libpng warns on stderr about some of these PNGs' colour profiles.
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise UserError(f"{path}: packaged photo unreadable ({exc}); reinstall {package}") from None
    image = np.ascontiguousarray(rgb[..., ::-1])
    return image


def random_view(src: np.ndarray, rng: np.random.Generator, size_range: tuple[int, int]) -> np.ndarray:
    """One photo-like view of ``src``: crop, rotation, perspective, colour, blur; long side in size_range."""
    h, w = src.shape[:2]
    area = rng.uniform(0.35, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    corners = np.float32([[x0, y0], [x0 + cw, y0], [x0 + cw, y0 + ch], [x0, y0 + ch]])
    # A camera at another position: tilt the crop's corners and rotate it a little.
    jitter = rng.uniform(-0.08, 0.08, size=(4, 2)) * np.float32([cw, ch])
    centre = corners.mean(axis=0)
    angle = np.deg2rad(rng.uniform(-12, 12))
    rot = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = (corners - centre) @ rot.T + centre + jitter
    long_side = int(rng.integers(size_range[0], size_range[1] + 1))
    if cw >= ch:
        out_w, out_h = long_side, max(8, round(long_side * ch / cw))
    else:
        out_h, out_w = long_side, max(8, round(long_side * cw / ch))
    target = np.float32([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]])
    matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), target)
    view = cv2.warpPerspective(src, matrix, (out_w, out_h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)

    hsv = cv2.cvtColor(view, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    view = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-30, 30)
    view = (view - view.mean()) * contrast + view.mean() + brightness
    view = np.clip(view, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        view = cv2.GaussianBlur(view, (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    return view


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def class_sizes(num_classes: int, max_per_class: int, min_per_class: int) -> list[int]:
    """A geometric long tail from max_per_class down to min_per_class (Table 2's shape in miniature)."""
    if num_classes == 1:
        return [max_per_class]
    ratio = (min_per_class / max_per_class) ** (1 / (num_classes - 1))
    return [max(min_per_class, round(max_per_class * ratio**i)) for i in range(num_classes)]


def _new_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        candidate = f"{int(rng.integers(0, 2**63)):016x}"
        if candidate not in taken:
            taken.add(candidate)
            out.append(candidate)
    return out


def make_sample(out_dir: str | Path, *, seed: int = 0, num_classes: int = 12, max_per_class: int = 40,
                min_per_class: int = 3, noise_fraction: float = 0.04, test_per_class: int = 2,
                nonlandmark_test: int = 12, image_size: tuple[int, int] = (160, 224)) -> dict:
    """Write the sample dataset to ``out_dir`` and return a summary (also saved as ``sample.json``)."""
    if not 1 <= num_classes <= len(LANDMARK_SOURCES):
        raise UserError(f"--classes must be between 1 and {len(LANDMARK_SOURCES)} (one per packaged photo)")
    if not 1 <= min_per_class <= max_per_class:
        raise UserError("need 1 <= min-per-class <= max-per-class")
    if not 0 <= noise_fraction < 0.5:
        raise UserError("--noise must be in [0, 0.5)")
    if not 8 <= image_size[0] <= image_size[1]:
        raise UserError("image size range must satisfy 8 <= low <= high")
    out = Path(out_dir)
    settings = {"seed": seed, "num_classes": num_classes, "max_per_class": max_per_class,
                "min_per_class": min_per_class, "noise_fraction": noise_fraction, "test_per_class": test_per_class,
                "nonlandmark_test": nonlandmark_test, "image_size": list(image_size)}
    if (out / "train.csv").exists():
        # Asking again for the same sample is a no-op, so scripts can rerun; anything else is refused.
        done = json.loads((out / "sample.json").read_text()) if (out / "sample.json").is_file() else {}
        if done.get("settings") == settings:
            return done
        raise UserError(f"{out}: already holds a different dataset (train.csv); choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    picks = rng.permutation(len(LANDMARK_SOURCES))[:num_classes]
    sources = [LANDMARK_SOURCES[i] for i in picks]
    photos = {s: load_source(*s) for s in sources + DISTRACTOR_SOURCES}
    landmark_ids = sorted(int(x) for x in rng.choice(GLDV2_MAX_LANDMARK_ID, size=num_classes, replace=False) + 1)
    landmark_ids = [landmark_ids[i] for i in rng.permutation(num_classes)]
    sizes = class_sizes(num_classes, max_per_class, min_per_class)
    taken: set[str] = set()

    def write(split: str, image_id: str, source: tuple[str, str]) -> None:
        view = random_view(photos[source], rng, image_size)
        path = image_path(out, split, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(view, int(rng.integers(75, 96))))

    train_rows, noise_rows = [], []
    for source, landmark_id, size in zip(sources, landmark_ids, sizes, strict=True):
        for image_id in _new_ids(rng, size, taken):
            write("train", image_id, source)
            train_rows.append((image_id, landmark_id))
    n_noise = int(round(noise_fraction * len(train_rows)))
    # Noise goes to classes DBSCAN can judge (>= 3 images), as label noise in GLDv2 mostly does.
    eligible = [i for i, s in enumerate(sizes) if s >= 3] or list(range(num_classes))
    for image_id in _new_ids(rng, n_noise, taken):
        target = int(rng.choice(eligible))
        others = [i for i in range(num_classes) if i != target]
        if others and rng.random() < 0.5:
            source, kind = sources[int(rng.choice(others))], "other-landmark"
        else:
            source, kind = DISTRACTOR_SOURCES[int(rng.integers(len(DISTRACTOR_SOURCES)))], "non-landmark"
        write("train", image_id, source)
        train_rows.append((image_id, landmark_ids[target]))
        noise_rows.append((image_id, landmark_ids[target], source[1].rsplit(".", 1)[0], kind))

    test_rows = []
    for source, landmark_id in zip(sources, landmark_ids, strict=True):
        for image_id in _new_ids(rng, test_per_class, taken):
            write("test", image_id, source)
            test_rows.append((image_id, str(landmark_id)))
    for image_id in _new_ids(rng, nonlandmark_test, taken):
        write("test", image_id, DISTRACTOR_SOURCES[int(rng.integers(len(DISTRACTOR_SOURCES)))])
        test_rows.append((image_id, ""))

    order = rng.permutation(len(train_rows))
    train = pd.DataFrame([train_rows[i] for i in order], columns=["id", "landmark_id"])
    train.to_csv(out / "train.csv", index=False)
    test = pd.DataFrame([test_rows[i] for i in rng.permutation(len(test_rows))], columns=["id", "landmarks"])
    # About a third Public, the rest Private, as the competition split its test set.
    test["Usage"] = np.where(np.arange(len(test)) % 3 == 0, "Public", "Private")
    test.sort_values("id").to_csv(out / "solution.csv", index=False)
    test[["id"]].assign(landmarks="").sort_values("id").to_csv(out / "sample_submission.csv", index=False)
    pd.DataFrame(noise_rows, columns=["id", "landmark_id", "true_source", "kind"]).to_csv(out / "noise.csv",
                                                                                           index=False)
    summary = {
        "seed": seed, "num_classes": num_classes, "train_images": len(train), "noise_images": len(noise_rows),
        "test_images": len(test), "nonlandmark_test_images": nonlandmark_test,
        "class_sizes": {str(lid): s for lid, s in zip(landmark_ids, sizes, strict=True)},
        "sources": {str(lid): s[1] for lid, s in zip(landmark_ids, sources, strict=True)},
        "image_size": list(image_size), "settings": settings,
    }
    (out / "sample.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="folder to create (must not already hold a dataset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    parser.add_argument("--classes", type=int, default=12, help=f"landmarks, 1..{len(LANDMARK_SOURCES)} (default 12)")
    parser.add_argument("--max-per-class", type=int, default=40, help="images of the largest class (default 40)")
    parser.add_argument("--min-per-class", type=int, default=3, help="images of the smallest class (default 3)")
    parser.add_argument("--noise", type=float, default=0.04, help="fraction of train images mislabelled (0.04)")
    parser.add_argument("--test-per-class", type=int, default=2, help="held-out test views per landmark (2)")
    parser.add_argument("--nonlandmark-test", type=int, default=12, help="non-landmark test images (12)")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 224), metavar=("LOW", "HIGH"),
                        help="long side of each image, drawn from [LOW, HIGH] (160 224)")


def run(args: argparse.Namespace) -> int:
    s = make_sample(args.out, seed=args.seed, num_classes=args.classes, max_per_class=args.max_per_class,
                    min_per_class=args.min_per_class, noise_fraction=args.noise,
                    test_per_class=args.test_per_class, nonlandmark_test=args.nonlandmark_test,
                    image_size=tuple(args.size))
    print(f"sample: {s['train_images']} train images ({s['noise_images']} injected noise) in "
          f"{s['num_classes']} classes, {s['test_images']} test images "
          f"({s['nonlandmark_test_images']} non-landmark) -> {args.out}")
    return 0
