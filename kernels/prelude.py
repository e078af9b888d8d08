"""The start every landmark-kaggle kernel shares: find the package wheel among the inputs and install it.

`landmark-kaggle kernels push` pastes this file into each launcher in place of its
`from prelude import ...` line, so the script Kaggle runs is self-contained;
edit this file, never a rendered copy. The wheel is found by its name at any
depth up to five under the input root, so every layout Kaggle mounts works
(`/kaggle/input/<slug>/`, `/kaggle/input/datasets/<owner>/<slug>/`, Kaggle
Models' `/kaggle/input/<model>/<framework>/<variation>/<version>/`). Kaggle's
image keeps its own TensorFlow, Keras and numpy: the wheel goes in with
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
MAX_DEPTH = 5
_ENV: dict = {}


def find_wheels(root: Path = INPUT, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every landmark_kaggle-*.whl at most ``max_depth`` folders below ``root``."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        depth = len(Path(folder).relative_to(root).parts)
        found += [Path(folder) / f for f in files if f.startswith("landmark_kaggle-") and f.endswith(".whl")]
        # One-character folders are GLDv2's image trees (train/a/b/c/): millions of files and never a wheel.
        dirs[:] = [] if depth >= max_depth else sorted(d for d in dirs if len(d) > 1)
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
    path = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p)
    _ENV.update(os.environ, PYTHONPATH=path)
    print(f"landmark-kaggle: installed {wheels[0].name} from {wheels[0].parent}", flush=True)


def run(module: str, *args: str) -> int:
    """Run ``python -m module args`` (plus LANDMARK_KAGGLE_ARGS) with the installed package; returns its exit status."""
    if not _ENV:
        install_package()
    args = (*args, *shlex.split(os.environ.get("LANDMARK_KAGGLE_ARGS", "")))
    print(f"landmark-kaggle: python -m {module} {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", module, *args], env=_ENV).returncode
