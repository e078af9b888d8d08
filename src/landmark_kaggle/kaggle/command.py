"""The ``landmark-kaggle kernels`` command: the whole Kaggle loop through the real ``kaggle`` client.

``bundle`` packs the wheel, model and indexes as dataset folders, ``datasets``
uploads them (``--parts FOLDER``: every part of a local ``tfrec-builder
write`` instead), each with ``kaggle datasets create`` when ``kaggle datasets
status`` says Kaggle does not have it yet and ``kaggle datasets version``
when it does, ``push NAME`` renders kernel NAME (submission | train |
build-embed | build-write; ``--part k``, ``--shards``, ``--args``:
``build_kernels``; ``--accelerator``) and runs ``kaggle kernels push -p``,
recording what it attached in ``pushed.json`` so that ``--continue`` pushes
the same shards, machine and options again, ``status NAME`` and ``output
NAME`` ask how a pushed kernel runs and download what it wrote, and
``submit`` makes the code-competition submission of a version of the
submission kernel (``kaggle competitions submit landmark-recognition-2021 -k
USER/SLUG -v N -f submission.csv -m MSG``) once that version is complete and
wrote the file; without ``--version`` it takes the version the last ``push``
of that kernel reported.

The client prints some failures and still exits 0 (``Kernel push error: …``),
and it accepts a push whose dataset or competition sources Kaggle refused,
printing only a note: the kernel would run without its data. Both are
failures here, one line each.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from landmark_kaggle.fileio import atomic_write_json
from landmark_kaggle.kaggle import build_kernels, credentials, kernels
from landmark_kaggle.kaggle.build_kernels import ShardSources
from landmark_kaggle.kaggle.kernels import KernelError
from landmark_kaggle.paths import COMPETITION

# What `kernels push` leaves beside the rendered kernel: which version Kaggle made of it.
PUSH_RECORD = "pushed.json"
PUSHED = re.compile(r"Kernel version (\d+) successfully pushed")
# kaggle_api_extended.kernels_push_cli's notes about sources Kaggle did not attach (kaggle 2.2.5).
REFUSED_SOURCES = re.compile(r"^The following are not valid (\w+) sources and could not be added to the kernel: (.*)$",
                             re.MULTILINE)
STATUS = re.compile(r'has status "(?:KernelWorkerStatus\.)?([A-Z_]+)"')
FAILURE = re.compile(r'^Failure message: "(.*)"$', re.MULTILINE)
# Kernel states that are not a failure (kagglesdk KernelWorkerStatus).
FINE = ("QUEUED", "RUNNING", "COMPLETE", "NEW_SCRIPT")


# `kaggle config view` prints the user the client logged in as (for a token: the name Kaggle gave for it).
CONFIG_USER = re.compile(r"^- username: (\S+)$", re.MULTILINE)
# What the client prints for a 404 (kaggle_api_extended._HTTP_ERROR_HINTS), and requests' own wording.
NOT_FOUND = ("The resource was not found", "404 Client Error")


def kaggle_command() -> list[str]:
    exe = Path(sys.executable).with_name("kaggle")
    return [str(exe)] if exe.exists() else ["kaggle"]


def client_username() -> str | None:
    """The user the kaggle client logs in as (``kaggle config view``); None when it finds none."""
    proc = subprocess.run(kaggle_command() + ["config", "view"], capture_output=True, text=True)
    found = CONFIG_USER.search(proc.stdout)
    return found.group(1) if found and found.group(1) != "None" else None


def kaggle_username(explicit: str | None = None) -> str:
    """``--user``, KAGGLE_USERNAME, kaggle.json, else the name the client gets for an access token."""
    return credentials.kaggle_username(explicit, ask_client=client_username)


def run_kaggle(args: list[str]) -> str:
    """Run the real kaggle client; its errors become one clear line."""
    proc = subprocess.run(kaggle_command() + args, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    # The client prints some failures ("Kernel push error: ...") and still exits 0.
    if proc.returncode != 0 or " error:" in proc.stdout.lower() or proc.stdout.lower().startswith("error"):
        said = " ".join(ln.strip() for ln in out.splitlines() if ln.strip())
        raise KernelError(f"`kaggle {' '.join(args)}` failed: {said[-800:] if said else proc.returncode}")
    return out


def rendered_folder(name: str, out: str | Path, part: int | None = None) -> Path:
    """Where ``push`` renders kernel NAME: one folder per build-write part, each with its push record."""
    return Path(out) / (f"{name}-part-{part}" if part is not None else name)


def last_push(folder: Path) -> dict:
    """The record the last push from ``folder`` left ({} when there is none)."""
    try:
        record = json.loads((folder / PUSH_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def render(name: str, user: str, out: str | Path, accelerator: str | None = None, continue_last: bool = False,
           keep_image: bool = False, **variant) -> tuple[Path, dict]:
    """Render kernel NAME for a push; returns the folder and what it attached (the push record's settings).

    With ``continue_last`` whatever this call leaves out (accelerator, shards, ``--args``) is taken from
    the last push's record, so the next version runs on the same machine, data and options.
    """
    folder = rendered_folder(name, out, variant.get("part"))
    if continue_last:
        last = last_push(folder)
        accelerator = accelerator or last.get("accelerator")
        if variant.get("kernel_args") is None:
            variant["kernel_args"] = last.get("kernel_args")
        if variant.get("shards") is None and last.get("shards"):
            try:
                variant["shards"] = ShardSources(**last["shards"])
            except TypeError:
                raise KernelError(f"{folder / PUSH_RECORD}: its shards are not {{'kernels': [...], 'datasets': "
                                  "[...]}; pass --shards again") from None
    if isinstance(variant.get("shards"), str):
        variant["shards"] = build_kernels.shard_sources(variant["shards"], user)
    kernels.render_kernel(name, user, folder, accelerator=accelerator, continue_last=continue_last,
                          keep_image=keep_image, **variant)
    meta = json.loads((folder / "kernel-metadata.json").read_text(encoding="utf-8"))
    shards = variant.get("shards")
    settings = {"accelerator": meta.get("machine_shape"), "kernel_args": variant.get("kernel_args"),
                "shards": shards._asdict() if shards else None,
                "dataset_sources": meta.get("dataset_sources", []), "kernel_sources": meta.get("kernel_sources", [])}
    return folder, settings


def push(name: str, user: str, out: str | Path, accelerator: str | None = None,
         continue_last: bool = False, keep_image: bool = False, **variant) -> tuple[dict, str]:
    """Render and push kernel NAME; returns the push record and the client's words.

    ``continue_last`` (train, build-embed) attaches the kernel's own last output, so the new version
    continues it, with the last push's shards, accelerator and ``--args`` unless given again;
    ``variant``: ``part``, ``shards``, ``kernel_args`` (``build_kernels``). The record
    (``pushed.json``: kernel, version, folder and those settings) is what ``submit`` and the next
    ``--continue`` read.

    Refuses, before sending anything, a train kernel with no shards to attach. Raises when Kaggle
    refused any dataset, competition or kernel source: the version exists then, but it runs without
    that data.
    """
    folder, settings = render(name, user, out, accelerator, continue_last, keep_image, **variant)
    if name == "train" and not settings["shards"]:
        last = folder / PUSH_RECORD
        raise KernelError("the train kernel would run with no shards attached: pass --shards P (the P build-write "
                          "kernels' outputs) or --shards FOLDER (parts uploaded with `kernels datasets --parts`)"
                          + ("; --continue found no shards in " + str(last) if continue_last else ""))
    cmd = ["kernels", "push", "-p", str(folder)]
    ref = json.loads((folder / "kernel-metadata.json").read_text(encoding="utf-8"))["id"]
    text = run_kaggle(cmd)
    refused = REFUSED_SOURCES.findall(text)
    version = PUSHED.search(text)
    if refused:
        what = "; ".join(f"{kind} {sources}" for kind, sources in refused)
        raise KernelError(f"Kaggle refused these sources of {ref}: {what}. The version "
                          f"{version.group(1) if version else '?'} it made runs without them: upload the "
                          "datasets (`kernels datasets`) or accept the competition's rules, then push again")
    record = {"kernel": ref, "version": int(version.group(1)) if version else None, "folder": str(folder),
              **settings}
    atomic_write_json(folder / PUSH_RECORD, record)
    return record, text


def pushed_version(name: str, out: str | Path) -> int:
    """The version the last ``push`` of kernel NAME into ``out`` reported."""
    path = Path(out) / name / PUSH_RECORD
    try:
        version = json.loads(path.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        version = None
    if not isinstance(version, int):
        raise KernelError(f"no --version given and no pushed version recorded in {path}; "
                          f"push the kernel first (`landmark-kaggle kernels push {name}`) or pass --version N")
    return version


def check_version(ref: str, version: int, file_name: str = "submission.csv") -> None:
    """Refuse unless version ``version`` of ``ref`` is complete and its output holds ``file_name``.

    Kaggle scores the file a finished version wrote; a version still running, failed, or one that wrote
    no such file would only cost a submission. Asks ``kaggle kernels status/output OWNER/SLUG/N``.
    """
    state, failure = status(f"{ref}/{version}")
    if state != "COMPLETE":
        raise KernelError(f"{ref} version {version} is {state.lower()}" + (f" ({failure})" if failure else "")
                          + ", not complete: nothing submitted (follow it with `landmark-kaggle kernels status`)")
    with tempfile.TemporaryDirectory() as tmp:
        run_kaggle(["kernels", "output", f"{ref}/{version}", "-p", tmp, "--file-pattern",
                    f"^{re.escape(file_name)}$", "-o", "-q"])
        if not (Path(tmp) / file_name).is_file():
            raise KernelError(f"{ref} version {version} is complete but its output holds no {file_name}: "
                              f"nothing submitted (read its log with `landmark-kaggle kernels output`)")


def submit(ref: str, version: int, message: str, file_name: str = "submission.csv",
           competition: str = COMPETITION) -> str:
    """The code-competition submission of version ``version`` of kernel ``ref``: the file it wrote is scored."""
    if version < 1:
        raise KernelError(f"--version {version}: kernel versions count from 1")
    check_version(ref, version, file_name)
    return run_kaggle(["competitions", "submit", competition, "-k", ref, "-v", str(version),
                       "-f", file_name, "-m", message])


def status(ref: str) -> tuple[str, str]:
    """(state, failure message) of kernel ``ref``'s latest run (``owner/slug/N``: of version N)."""
    text = run_kaggle(["kernels", "status", ref])
    found = STATUS.search(text)
    if not found:
        raise KernelError(f"`kaggle kernels status {ref}` answered something unexpected: {text[-300:]!r}")
    failure = FAILURE.search(text)
    return found.group(1), failure.group(1) if failure else ""


def output(ref: str, dest: str | Path) -> list[Path]:
    """Download everything kernel ``ref``'s latest run wrote (and its log) into ``dest``; returns the files."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    run_kaggle(["kernels", "output", ref, "-p", str(dest), "-o"])
    return sorted(p for p in dest.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns)


def dataset_exists(ref: str) -> bool:
    """Whether Kaggle has dataset ``ref`` (``kaggle datasets status``: 404 means no; other errors raise)."""
    try:
        run_kaggle(["datasets", "status", ref])
    except KernelError as exc:
        if any(said in str(exc) for said in NOT_FOUND):
            return False
        raise
    return True


def upload_datasets(out: str | Path, message: str, parts: str | Path | None = None) -> list[dict]:
    """Upload the bundle folders in ``out``, or every part folder of the local build ``parts``: each one
    Kaggle does not have yet with ``datasets create``, each one it has with ``datasets version``.

    Returns one entry per folder: dataset id, folder, action (created | versioned | failed) and what the
    client said (or why it failed); a failure does not stop the others.
    """
    out = Path(out)
    if parts is not None:
        found = build_kernels.part_folders(parts)
    else:
        found = [out / slug for slug in kernels.DATASET_TITLES if (out / slug / "dataset-metadata.json").is_file()]
    if not found:
        raise KernelError(f"no bundle folders in {out}; run `landmark-kaggle kernels bundle` first")
    done = []
    for folder in found:
        entry = {"folder": str(folder), "id": None, "action": "failed", "said": ""}
        try:
            entry["id"] = json.loads((folder / "dataset-metadata.json").read_text(encoding="utf-8"))["id"]
            credentials.scan_for_credentials(folder)
            if dataset_exists(entry["id"]):
                entry["said"] = run_kaggle(["datasets", "version", "-p", str(folder), "-m", message])
                entry["action"] = "versioned"
            else:
                entry["said"] = run_kaggle(["datasets", "create", "-p", str(folder)])
                entry["action"] = "created"
        except (KernelError, ValueError, KeyError, OSError) as exc:
            entry["said"] = str(exc) if not isinstance(exc, KeyError) else "dataset-metadata.json has no id"
        done.append(entry)
    return done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    user_help = "Kaggle user name (default: KAGGLE_USERNAME or the kaggle config)"
    name_help = f"{' | '.join(kernels.KERNEL_TEMPLATES)}, or owner/kernel-slug"
    b = sub.add_parser("bundle", help="build the wheel dataset folder and pack the model (and index) folders")
    b.add_argument("--model", help="model folder (model.weights.h5, config.json, label_map.csv)")
    b.add_argument("--index", help="retrieval index folder from embed-index --data")
    b.add_argument("--distractors", help="non-landmark index folder from embed-index --images")
    b.add_argument("--out", default="bundles", help="where the dataset folders go (default: bundles)")
    b.add_argument("--user", help=user_help)
    d = sub.add_parser("datasets", help="upload the bundle folders with `kaggle datasets create/version`")
    d.add_argument("--out", default="bundles", help="the folder `kernels bundle` wrote")
    # Older command lines said --new for the first upload; what exists is now asked, so it changes nothing.
    d.add_argument("--new", action="store_true", help=argparse.SUPPRESS)
    d.add_argument("--message", default="landmark-kaggle update",
                   help="version notes for the datasets Kaggle already has (the others are created)")
    d.add_argument("--parts", metavar="FOLDER",
                   help="upload each part folder of a local `tfrec-builder write` (FOLDER holds them, or is one) "
                        "as its own dataset, instead of the bundle folders")
    p = sub.add_parser("push", help="render a kernel's metadata for your user, check it, run `kaggle kernels push`")
    p.add_argument("name", choices=sorted(kernels.KERNEL_TEMPLATES))
    p.add_argument("--user", help=user_help)
    p.add_argument("--accelerator", metavar="|".join(kernels.ACCELERATORS),
                   help="the machine: NvidiaTeslaT4 (GPU T4 x2) or TpuV5E8 (TPU v5e-8); sets machine_shape, "
                        "enable_gpu and enable_tpu, overriding the kernel's metadata")
    p.add_argument("--continue", dest="continue_last", action="store_true",
                   help="train, build-embed: attach this kernel's last version's output, so the new version "
                        "continues it (the checkpoint, the embeddings store), with the last push's shards, "
                        "accelerator and --args unless given again")
    p.add_argument("--keep-image", action="store_true",
                   help="push a metadata that pins a Docker image (docker_image, docker_image_pinning_type "
                        "original); refused otherwise")
    p.add_argument("--part", type=int, metavar="K",
                   help=f"build-write: the kernel for part K (slug {build_kernels.WRITE_SLUG.format(k='K')})")
    p.add_argument("--shards", metavar="N|FOLDER",
                   help="train: attach the outputs of the N build-write kernels, or the part datasets of a local "
                        "build FOLDER (their dataset-metadata.json ids), instead of the one shard dataset")
    p.add_argument("--args", dest="kernel_args", metavar="'OPTIONS'",
                   help="options appended to the kernel's command, written into the pushed script (e.g. "
                        "--args '--image-size 300'); a version that continues another needs the same ones")
    p.add_argument("--out", default="bundles/kernels", help="where the rendered kernel folder goes")
    p.add_argument("--dry-run", action="store_true", help="render and check only; do not push")
    name_help += ", or build-write-part-K"
    st = sub.add_parser("status", help="the state of a pushed kernel's latest run (exit 1 when it failed)")
    st.add_argument("name", help=name_help)
    st.add_argument("--user", help=user_help)
    o = sub.add_parser("output", help="download the files a kernel's latest run wrote, and its log")
    o.add_argument("name", help=name_help)
    o.add_argument("--out", help="where they go (default: output/<kernel-slug>)")
    o.add_argument("--user", help=user_help)
    s = sub.add_parser("submit", help="submit a version of the submission kernel to the competition, once that "
                                      "version is complete and wrote the file")
    s.add_argument("--kernel", default="submission", help=f"{name_help} (default: submission)")
    s.add_argument("--version", type=int, help="kernel version (default: the one the last `kernels push` made)")
    s.add_argument("--message", help="submission description (default: kernel and version)")
    s.add_argument("--file", default="submission.csv", help="the file the kernel writes (default: submission.csv)")
    s.add_argument("--pushed", default="bundles/kernels", help="where `kernels push` rendered (and recorded) kernels")
    s.add_argument("--user", help=user_help)


def run(args: argparse.Namespace) -> int:
    if args.action == "bundle":
        folders = kernels.bundle(args.out, kaggle_username(args.user), args.model, args.index, args.distractors)
        for slug, folder in folders.items():
            print(f"{slug}: {folder} ({sum(1 for p in folder.iterdir() if p.is_file())} files)")
        print(f"bundled {len(folders)} dataset folders into {args.out}; upload with `landmark-kaggle kernels datasets`")
        return 0
    if args.action == "datasets":
        done = upload_datasets(args.out, args.message, args.parts)
        for entry in done:
            said = " ".join(ln.strip() for ln in entry["said"].splitlines() if ln.strip())
            print(f"{entry['id'] or entry['folder']}: {entry['action']}" + (f": {said}" if said else ""))
        failed = [e["id"] or e["folder"] for e in done if e["action"] == "failed"]
        counts = {a: sum(e["action"] == a for e in done) for a in ("created", "versioned")}
        print(f"uploaded {counts['created'] + counts['versioned']} datasets ({counts['created']} created, "
              f"{counts['versioned']} versioned)" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    user = kaggle_username(args.user)
    if args.action == "push":
        variant = dict(part=args.part, shards=args.shards, kernel_args=args.kernel_args)
        if args.dry_run:
            folder, _ = render(args.name, user, args.out, args.accelerator, args.continue_last, args.keep_image,
                               **variant)
            print(f"rendered {folder / 'kernel-metadata.json'} (not pushed)")
            return 0
        record, text = push(args.name, user, args.out, args.accelerator, args.continue_last, args.keep_image,
                            **variant)
        print(text)
        follow = args.name if args.part is None else f"build-write-part-{args.part}"
        print(f"pushed {record['kernel']} version {record['version']} on {record['accelerator'] or 'CPU'}; "
              f"follow it with `landmark-kaggle kernels status {follow}`")
        return 0
    if args.action == "status":
        ref = kernels.kernel_ref(args.name, user)
        state, failure = status(ref)
        print(f"{ref}: {state.lower()}" + (f": {failure}" if failure else ""))
        return 0 if state in FINE else 1
    if args.action == "output":
        ref = kernels.kernel_ref(args.name, user)
        dest = Path(args.out or Path("output") / ref.split("/")[1])
        files = output(ref, dest)
        print(f"{ref}: {len(files)} files into {dest}" + (f": {', '.join(p.name for p in files)}" if files else ""))
        return 0
    ref = kernels.kernel_ref(args.kernel, user)
    if args.version is not None:
        version = args.version
    elif "/" in args.kernel:
        raise KernelError(f"--kernel {args.kernel}: give --version N (only kernels pushed from here are recorded)")
    else:
        version = pushed_version(args.kernel, args.pushed)
    text = submit(ref, version, args.message or f"landmark-kaggle {ref} version {version}", args.file)
    print(text)
    print(f"submitted {ref} version {version} ({args.file}) to {COMPETITION}")
    return 0
