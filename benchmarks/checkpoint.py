"""A training checkpoint's weight file: Keras 3 as shipped vs with ``model/keras_saving``'s mend.

The trainer's checkpoint is ``model.save_weights`` of the compiled network with
its optimizer's state (``train/loop.py``), and resuming is ``load_weights``;
both walk every layer, and Keras 3.15.1 builds a throwaway reference object for
each (``landmark_kaggle.model.keras_saving``). Here the same model saves and
loads ``--repeat`` times each way, alternating, in one process; the files are
checked to hold the same arrays. Median seconds and the ratio are printed.

    python benchmarks/checkpoint.py [--backbones EfficientNetV2B0,EfficientNetV2S] [--classes 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import weight_file_arrays  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="EfficientNetV2B0,EfficientNetV2S")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    from keras.src.saving import saving_lib

    from landmark_kaggle.config import load_config
    from landmark_kaggle.model.network import build_model
    from landmark_kaggle.train.optim import compile_model

    mended = saving_lib.get_attr_skipset
    shipped = getattr(mended, "__wrapped__", None)
    if shipped is None:
        raise SystemExit("the mend is not in place (this Keras caches its skip-sets itself): nothing to compare")
    print(f"{'backbone':<16} {'arrays':>6} {'MB':>6}  {'save shipped':>12} {'save mended':>11} {'ratio':>5}  "
          f"{'load shipped':>12} {'load mended':>11} {'ratio':>5}")
    for backbone in args.backbones.split(","):
        cfg = load_config(overrides=[f"model.backbone={backbone}", "data.image_size=64"])
        model = build_model(cfg, args.classes)
        compile_model(model, cfg, steps_per_epoch=10)
        model.optimizer.build(model.trainable_variables)
        times = {(op, way): [] for op in ("save", "load") for way in ("shipped", "mended")}
        with tempfile.TemporaryDirectory() as tmp:
            files = {way: Path(tmp) / f"{way}.weights.h5" for way in ("shipped", "mended")}
            for _ in range(args.repeat):
                for way, fn in (("shipped", shipped), ("mended", mended)):
                    saving_lib.get_attr_skipset = fn
                    t = time.perf_counter()
                    model.save_weights(files[way])
                    times["save", way].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    model.load_weights(files[way])
                    times["load", way].append(time.perf_counter() - t)
            saving_lib.get_attr_skipset = mended
            a, b = (weight_file_arrays(files[way]) for way in ("shipped", "mended"))
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "the files differ"
            mb = files["mended"].stat().st_size / 2**20
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = [f"{med[op, 'shipped']:>11.2f}s {med[op, 'mended']:>10.2f}s "
                 f"{med[op, 'shipped'] / med[op, 'mended']:>5.2f}" for op in ("save", "load")]
        print(f"{backbone:<16} {len(a):>6} {mb:>6.0f}  {cells[0]}  {cells[1]}", flush=True)


if __name__ == "__main__":
    main()
