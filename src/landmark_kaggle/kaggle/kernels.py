"""Kaggle kernels and datasets from this checkout: the bundles the kernels attach, and the rendered kernels.

``bundle`` builds the package wheel (``pip wheel --no-deps``) into one dataset
folder and copies a model folder (and, if given, the retrieval index and the
non-landmark index) into others, each with its ``dataset-metadata.json``, so the offline submission
kernel can ``pip install --no-index`` the package and find the model.

``render_kernel`` fills a kernel's metadata template (submission | train |
build-embed | build-write) with your Kaggle user name (``--user``, else ``KAGGLE_USERNAME``, else
the ``username`` in ``kaggle.json``, else the name the kaggle client finds for
an access token; no credential is ever read into anything we write), pastes
``kernels/prelude.py`` into its launcher, sets the accelerator
(``machine_shape`` with the matching ``enable_gpu``/``enable_tpu``) and checks
the metadata against the rules the kaggle client enforces in ``kernels_push``
plus our own (internet stated explicitly, no placeholder left, an accelerator
kernel names its machine, no pinned Docker image); the build kernels' variants
(``--part``, ``--shards``, ``--args``) are edits of the rendered folder in
``build_kernels``. ``command`` runs the real kaggle client over them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from landmark_kaggle.kaggle import build_kernels
from landmark_kaggle.kaggle.credentials import KernelError, scan_for_credentials

REPO_ROOT = Path(__file__).resolve().parents[3]
PLACEHOLDER = "YOUR_KAGGLE_USERNAME"
# Every launcher starts with this import; rendering replaces the line with kernels/prelude.py itself.
PRELUDE = "kernels/prelude.py"
PRELUDE_IMPORT = re.compile(r"^from prelude import [^\n]*$", re.MULTILINE)
# Kernel name -> its metadata template, relative to the checkout root.
KERNEL_TEMPLATES = {
    "submission": "kernel-metadata.json",
    "train": "kernels/train/kernel-metadata.json",
    "build-embed": "kernels/build-embed/kernel-metadata.json",
    "build-write": "kernels/build-write/kernel-metadata.json",
}
# Kernels whose next version continues the last one's output (`kernels push NAME --continue`): the train
# kernel resumes its checkpoint, build-embed its embeddings store.
CONTINUABLE = ("train", "build-embed")
WHEEL_DATASET = "landmark-kaggle-wheel"
MODEL_DATASET = "landmark-kaggle-model"
INDEX_DATASET = "landmark-kaggle-index"
DISTRACTOR_DATASET = "landmark-kaggle-distractors"
DATASET_TITLES = {
    WHEEL_DATASET: "landmark-kaggle package wheel",
    MODEL_DATASET: "landmark-kaggle model folder",
    INDEX_DATASET: "landmark-kaggle retrieval index",
    DISTRACTOR_DATASET: "landmark-kaggle non-landmark index",
}
# The model folder's contract (model.MODEL_FOLDER_FILES; this module does not import TensorFlow).
MODEL_FILES = ("model.weights.h5", "config.json", "label_map.csv")
# Values the kaggle client accepts (kaggle_api_extended.KaggleApi.valid_push_*).
LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
BOOL_KEYS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
# The accelerators a kernel of ours may ask for (kaggle-cli docs/kernels.md, "Accelerators available"; PR #916):
# "GPU T4 x2" and "TPU v5e-8". `enable_gpu` alone has landed on another pool (kaggle-cli issue #821), so every
# accelerator kernel names its machine_shape.
ACCELERATORS = {"NvidiaTeslaT4": "gpu", "TpuV5E8": "tpu"}
# kaggle 2.2.5's _RETIRED_ACCELERATORS: the server runs these on a substitute, so asking for one is a mistake.
RETIRED_ACCELERATORS = {"nvidiateslap100": "NvidiaTeslaT4", "tpuv38": "TpuV5E8", "tpu1vmv38": "TpuV5E8"}


def dataset_metadata(slug: str, user: str) -> dict:
    return {"title": DATASET_TITLES[slug], "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}]}


def _write_json(path: Path, payload: dict) -> Path:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def build_wheel(out_dir: Path, repo: Path = REPO_ROOT) -> Path:
    """``pip wheel --no-deps`` from a clean copy of the package sources (no build/ litter in the checkout)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("landmark_kaggle-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src-copy"
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
        src.mkdir()
        for name in ("setup.py", "README.md"):
            shutil.copy2(repo / name, src / name)
        for name in ("src", "tfrec_builder"):
            shutil.copytree(repo / name, src / name, ignore=ignore)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "-q", "-w", str(out_dir), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelError(f"pip wheel failed:\n{proc.stderr.strip()[-2000:]}")
    wheels = sorted(out_dir.glob("landmark_kaggle-*.whl"))
    if len(wheels) != 1:
        raise KernelError(f"expected one landmark_kaggle wheel in {out_dir}, found {len(wheels)}")
    return wheels[0]


def bundle(out_dir: str | Path, user: str, model_dir: str | Path | None = None,
           index_dir: str | Path | None = None, distractors_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the dataset folders the submission kernel attaches; returns slug -> folder."""
    out = Path(out_dir)
    folders: dict[str, Path] = {}
    wheel_dir = out / WHEEL_DATASET
    build_wheel(wheel_dir)
    _write_json(wheel_dir / "dataset-metadata.json", dataset_metadata(WHEEL_DATASET, user))
    folders[WHEEL_DATASET] = wheel_dir
    if model_dir:
        model_dir = Path(model_dir)
        missing = [n for n in MODEL_FILES if not (model_dir / n).is_file()]
        if missing:
            raise KernelError(f"model folder {model_dir} lacks {', '.join(missing)}")
        dest = out / MODEL_DATASET
        dest.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            shutil.copy2(model_dir / name, dest / name)
        _write_json(dest / "dataset-metadata.json", dataset_metadata(MODEL_DATASET, user))
        folders[MODEL_DATASET] = dest
    for slug, folder in ((INDEX_DATASET, index_dir), (DISTRACTOR_DATASET, distractors_dir)):
        if not folder:
            continue
        folder = Path(folder)
        if not (folder / "index.json").is_file():
            raise KernelError(f"{folder} is not a finished index (no index.json); make one with embed-index")
        dest = out / slug
        # The chunk markers only matter while embedding; `kaggle datasets create` skips sub-folders anyway.
        shutil.copytree(folder, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("chunks"))
        _write_json(dest / "dataset-metadata.json", dataset_metadata(slug, user))
        folders[slug] = dest
    for folder in folders.values():
        scan_for_credentials(folder)
    return folders


def _render(value, user: str):
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, user)
    if isinstance(value, list):
        return [_render(v, user) for v in value]
    return value


def check_accelerator(shape: str, where: str = "--accelerator") -> str:
    """``shape`` if it is one of ours; a retired or unknown one is an error that names the one to use."""
    if shape in ACCELERATORS:
        return shape
    instead = RETIRED_ACCELERATORS.get(shape.lower())
    if instead:
        raise KernelError(f"{where}: {shape} is retired (kaggle 2.2.5: Kaggle runs the session on {instead} "
                          f"instead); ask for {instead}")
    raise KernelError(f"{where}: accelerator {shape!r} is not one of {', '.join(ACCELERATORS)} "
                      "(GPU T4 x2, TPU v5e-8)")


def set_accelerator(meta: dict, shape: str) -> dict:
    """``machine_shape`` and the enable_gpu/enable_tpu that go with it (the client sends all three)."""
    kind = ACCELERATORS[check_accelerator(shape)]
    meta.update(machine_shape=shape, enable_gpu=kind == "gpu", enable_tpu=kind == "tpu")
    return meta


def validate_kernel_metadata(meta: dict, folder: Path, *, where: str = "kernel-metadata.json",
                             keep_image: bool = False) -> None:
    """The checks of ``KaggleApi.kernels_push`` (kaggle 2.2.5), raised as KernelError, plus ours."""
    def fail(msg: str) -> None:
        raise KernelError(f"{where}: {msg}")

    text = json.dumps(meta)
    if PLACEHOLDER in text:
        fail(f"still contains {PLACEHOLDER}; render it with `kernels push --user NAME`")
    title = meta.get("title") or ""
    if len(title) < 5:
        fail("title must be at least five characters")
    code = meta.get("code_file")
    if not code:
        fail("code_file is required")
    if not (folder / code).is_file():
        fail(f"code_file {code} not found in {folder}")
    slug = meta.get("id") or ""
    parts = slug.split("/")
    if len(parts) != 2 or not all(parts):
        fail(f"id {slug!r} must be 'username/kernel-slug' (no version)")
    if len(parts[1]) < 5:
        fail(f"kernel slug {parts[1]!r} must be at least five characters")
    from slugify import slugify

    # The client only warns here; a mismatch makes Kaggle create a second kernel, so we refuse.
    if slugify(title) != parts[1].lower():
        fail(f"title {title!r} slugifies to {slugify(title)!r}, not the id's slug {parts[1]!r}")
    if meta.get("language") not in LANGUAGES:
        fail(f"language must be one of {', '.join(LANGUAGES)}")
    if meta.get("kernel_type") not in KERNEL_TYPES:
        fail(f"kernel_type must be one of {', '.join(KERNEL_TYPES)}")
    for key in BOOL_KEYS:
        if key in meta and not (isinstance(meta[key], bool) or str(meta[key]).lower() in ("true", "false")):
            fail(f"{key} must be true or false, not {meta[key]!r}")
    # The client turns an absent enable_internet into true: state it every time.
    if "enable_internet" not in meta:
        fail("enable_internet must be written out (the kaggle client defaults it to true)")
    for source in meta.get("dataset_sources", []):
        bits = source.split("/")
        if len(bits) not in (2, 3) or not bits[0] or not bits[1]:
            fail(f"dataset source {source!r} must be 'username/dataset-slug[/version]'")
    for source in meta.get("kernel_sources", []):
        bits = source.split("/")
        if len(bits) not in (2, 3) or not bits[0] or not bits[1] or len(bits[1]) < 5:
            fail(f"kernel source {source!r} must be 'username/kernel-slug[/version]'")
    for source in meta.get("model_sources", []):
        if len(source.split("/")) != 5:
            fail(f"model source {source!r} must be 'owner/model/framework/variation/version'")
    pin = meta.get("docker_image_pinning_type")
    if pin is not None and pin not in PINNING_TYPES:
        fail(f"docker_image_pinning_type must be one of {', '.join(PINNING_TYPES)}")
    if not keep_image and (meta.get("docker_image") or pin == "original"):
        what = (f"docker_image {meta['docker_image']!r}" if meta.get("docker_image")
                else "docker_image_pinning_type original")
        fail(f"{what} pins the kernel's image (as `kaggle kernels pull -m` writes it); with a pinned image a "
             "TpuV5E8 push has run on the CPU image (kaggle-cli issue #1197). Remove it, or pass --keep-image "
             "if you mean it")
    shape = meta.get("machine_shape")
    gpu, tpu = (str(meta.get(k, False)).lower() == "true" for k in ("enable_gpu", "enable_tpu"))
    if shape:
        check_accelerator(shape, where)
        kind = ACCELERATORS[shape]
        if (kind == "gpu") != gpu or (kind == "tpu") != tpu:
            fail(f"machine_shape {shape} is a {kind.upper()}, but enable_gpu is {gpu} and enable_tpu is {tpu}")
    elif gpu or tpu:
        fail(f"enable_{'gpu' if gpu else 'tpu'} without machine_shape has given the default pool, not the machine "
             f"meant (kaggle-cli issue #821): add machine_shape ({' or '.join(ACCELERATORS)})")


def render_code(code: Path, repo: Path = REPO_ROOT) -> str:
    """A launcher with its ``from prelude import ...`` line replaced by the prelude: one self-contained script."""
    text = code.read_text(encoding="utf-8")
    if len(PRELUDE_IMPORT.findall(text)) != 1:
        raise KernelError(f"{code}: expected one `from prelude import ...` line (the shared install step)")
    prelude = (repo / PRELUDE).read_text(encoding="utf-8")
    block = (f"# ---- {PRELUDE}, pasted by `landmark-kaggle kernels push` (edit that file, not this copy) ----\n"
             f"{prelude.rstrip()}\n# ---- end of {PRELUDE} ----")
    return PRELUDE_IMPORT.sub(lambda _: block, text)


def render_kernel(name: str, user: str, out_dir: str | Path, repo: Path = REPO_ROOT,
                  accelerator: str | None = None, continue_last: bool = False, *, part: int | None = None,
                  shards=None, kernel_args: str | None = None, keep_image: bool = False) -> Path:
    """Copy kernel NAME's code and rendered metadata into out_dir, ready for ``kaggle kernels push -p``.

    ``continue_last`` attaches the kernel's own output (Kaggle mounts its latest
    version's) through ``kernel_sources``: the train kernel resumes its checkpoint
    from it, build-embed its store. ``part``, ``shards`` and ``kernel_args`` are
    the build kernels' variants (``build_kernels.adjust_rendered``). ``accelerator``
    (``ACCELERATORS``) replaces the template's machine; ``keep_image`` lets a
    pinned Docker image through.
    """
    if name not in KERNEL_TEMPLATES:
        raise KernelError(f"unknown kernel {name!r}; choose from {', '.join(KERNEL_TEMPLATES)}")
    template = repo / KERNEL_TEMPLATES[name]
    try:
        meta = json.loads(template.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KernelError(f"{template} not found (run from a landmark-kaggle checkout)") from None
    except json.JSONDecodeError as exc:
        raise KernelError(f"{template}: not valid JSON (line {exc.lineno})") from None
    # The template's code_file is relative to the template's folder.
    code = template.parent / meta.get("code_file", "")
    if not code.is_file():
        raise KernelError(f"{template}: code_file {meta.get('code_file')!r} not found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The user goes into the code too where a launcher names one (the dataset id build-write gives its parts).
    (out / code.name).write_text(render_code(code, repo).replace(PLACEHOLDER, user), encoding="utf-8")
    meta = {k: _render(v, user) for k, v in meta.items()}
    meta["code_file"] = code.name
    if accelerator:
        set_accelerator(meta, accelerator)
    if continue_last:
        if name not in CONTINUABLE:
            raise KernelError(f"--continue is for the {' and '.join(CONTINUABLE)} kernels (their next version "
                              f"continues the last one's output), not {name}")
        meta["kernel_sources"] = [*[s for s in meta.get("kernel_sources", []) if s != meta["id"]], meta["id"]]
    _write_json(out / "kernel-metadata.json", meta)
    build_kernels.adjust_rendered(out, name, user, part=part, shards=shards, kernel_args=kernel_args)
    validate_kernel_metadata(json.loads((out / "kernel-metadata.json").read_text(encoding="utf-8")), out,
                             where=str(template), keep_image=keep_image)
    scan_for_credentials(out)
    return out


def kernel_ref(name: str, user: str, repo: Path = REPO_ROOT) -> str:
    """``owner/slug`` of kernel NAME (its template's id for ``user``, or ``build-write-part-K``, the folder
    ``push build-write --part K`` renders into); an ``owner/slug`` passes through."""
    if "/" in name:
        bits = name.split("/")
        if len(bits) != 2 or not all(bits):
            raise KernelError(f"kernel {name!r} must be one of {', '.join(KERNEL_TEMPLATES)} or 'owner/kernel-slug'")
        return name
    part = re.fullmatch(r"build-write-part-(\d+)", name)
    if part:
        return f"{user}/{build_kernels.WRITE_SLUG.format(k=int(part.group(1)))}"
    if name not in KERNEL_TEMPLATES:
        raise KernelError(f"unknown kernel {name!r}; choose from {', '.join(KERNEL_TEMPLATES)}, "
                          "build-write-part-K or give owner/slug")
    meta = json.loads((repo / KERNEL_TEMPLATES[name]).read_text(encoding="utf-8"))
    return _render(meta["id"], user)
