"""The start every landmark-kaggle kernel shares: install the package from the attached wheel, find the inputs.

`landmark-kaggle kernels push` pastes this file into each launcher in place of its
`from prelude import ...` line, so the script Kaggle runs is self-contained;
edit this file, never a rendered copy. The wheel is found by its name at any
depth up to eight under the input root, never inside GLDv2's image folders
(`train/a/b/c/`): the same rules as `landmark_kaggle.paths.find_inputs`, which finds
everything else once the wheel is in (`one(kind)`, `every(kind)`), so every
layout Kaggle mounts works (`/kaggle/input/<slug>/`,
`/kaggle/input/competitions/<slug>/`, `/kaggle/input/datasets/<owner>/<slug>/`,
`/kaggle/input/notebooks/<owner>/<slug>/`,
`/kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>/` and the
older `/kaggle/input/<model>/<framework>/<variation>/<version>/`).
Kaggle's image keeps its own TensorFlow, Keras and numpy: the wheel goes in with
`--no-deps` into a private folder, and the package runs on their versions.
LANDMARK_KAGGLE_ARGS, when set, is appended to the kernel's command (split like
a shell line): the way to rehearse a kernel on your own machine with other
settings, e.g. `--set runtime.devices=cpu:8 --set data.image_size=64`.
"""

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

# Kaggle mounts inputs here; tests and local runs move it with this variable.
INPUT = Path(os.environ.get("LANDMARK_KAGGLE_INPUT", "/kaggle/input"))
MAX_DEPTH = 8  # landmark_kaggle.paths.MAX_DEPTH (a test keeps them equal)
IMAGE_SPLITS = ("train", "test", "index")
# Set to 1 to see the command a launcher would run, with its inputs found, without running it.
PLAN_ENV = "LANDMARK_KAGGLE_PLAN"
_ENV: dict = {}


def find_wheels(root: Path = INPUT, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every landmark_kaggle-*.whl at most ``max_depth`` folders below ``root``."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        depth = len(Path(folder).relative_to(root).parts)
        if os.path.realpath(folder) in seen:  # the same folder again through a link: not a second wheel
            dirs[:] = []
            continue
        seen.add(os.path.realpath(folder))
        found += [Path(folder) / f for f in files if f.startswith("landmark_kaggle-") and f.endswith(".whl")]
        # GLDv2's image trees (train/a/b/c/: one-character folders under a split folder) hold millions of
        # files and never a wheel; a Kaggle Model's version folder (…/keras/s/1/) is one character too.
        image_split = Path(folder).name in IMAGE_SPLITS
        dirs[:] = [] if depth >= max_depth else sorted(d for d in dirs if not (image_split and len(d) == 1))
    return sorted(found)


def install_package() -> None:
    """Install the one attached wheel into a private folder; exit with a clear message if there is not one."""
    wheels = find_wheels()
    if len(wheels) != 1:
        listed = ", ".join(map(str, wheels)) or "none"
        sys.exit(f"landmark-kaggle: expected one landmark_kaggle-*.whl under {INPUT} (attach the "
                 f"landmark-kaggle-wheel dataset), found {listed}")
    target = tempfile.mkdtemp(prefix="landmark_kaggle_")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                    "--target", target, str(wheels[0])], check=True)
    sys.path.insert(0, target)  # for one() and every(): landmark_kaggle.paths needs nothing beyond the stdlib
    path = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p)
    _ENV.update(os.environ, PYTHONPATH=path)
    print(f"landmark-kaggle: installed {wheels[0].name} from {wheels[0].parent}", flush=True)


def _ask(question: str, kind: str):
    """``landmark_kaggle.paths.find_inputs(INPUT).<question>(kind)``; its error ends the kernel in one line."""
    if not _ENV:
        install_package()
    from landmark_kaggle.errors import UserError
    from landmark_kaggle.paths import find_inputs

    try:
        return getattr(find_inputs(INPUT), question)(kind)
    except UserError as exc:
        sys.exit(f"landmark-kaggle: {exc}")


def one(kind: str) -> str:
    """The one input of ``kind`` (landmark_kaggle.paths.KINDS); none or several ends the kernel, naming them."""
    return str(_ask("one", kind))


def every(kind: str) -> list[str]:
    """Every input of ``kind``, at least one (e.g. all parts of a shard build)."""
    return [str(p) for p in _ask("every", kind)]


def run(module: str, *args: str) -> int:
    """Run ``python -m module args`` (plus LANDMARK_KAGGLE_ARGS) with the installed package; returns its exit status."""
    if not _ENV:
        install_package()
    args = (*args, *shlex.split(os.environ.get("LANDMARK_KAGGLE_ARGS", "")))
    print(f"landmark-kaggle: python -m {module} {' '.join(args)}", flush=True)
    if os.environ.get(PLAN_ENV) == "1":
        return 0
    return subprocess.run([sys.executable, "-m", module, *args], env=_ENV).returncode
