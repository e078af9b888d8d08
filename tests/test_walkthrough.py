"""docs/kaggle.md's "On Kaggle, step by step", run from its own text: every command of every step, in order.

The ``bash`` blocks of the numbered steps are read from the page and run as
printed (one ``bash -euo pipefail`` per block, from a scratch folder standing
for the checkout's root) with the real ``kaggle`` client and our CLI, logged
in the way the page explains first (an access token in
``~/.kaggle/access_token``, no user name anywhere), against the recording
server of ``kaggle_server.py``. Between steps the server plays Kaggle's part
(the kernels finish, their outputs appear), and step 6's local work is stood
in for by its result (the two index folders). After each step the test reads
what reached the server. A command added to or dropped from the page changes
what is sent, so the page and this test cannot drift apart.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kaggle_server import SECRET, TOKEN

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "kaggle.md"
USER = "alice"
K = f"{USER}/landmark-kaggle-"
PARTS = [f"{K}build-write-part-{k}" for k in range(1, 7)]
CSV = b"id,landmarks\n0123456789abcdef,1000 0.9\n"
STEP = re.compile(r"^(\d+)\. \*\*", re.MULTILINE)
BLOCK = re.compile(r"^( *)```bash\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)


def walkthrough(text: str) -> dict[int, str]:
    """Step number -> the shell text of its ``bash`` block(s), from the page's first section (the steps)."""
    steps_text = text.split("\n## ", 1)[0]
    starts = [(int(m.group(1)), m.start()) for m in STEP.finditer(steps_text)]
    assert [n for n, _ in starts] == list(range(1, len(starts) + 1)), "the steps are numbered 1, 2, 3, ..."
    found = {}
    for (n, start), (_, end) in zip(starts, [*starts[1:], (0, len(steps_text))], strict=True):
        blocks = [textwrap.dedent(m.group(2)) for m in BLOCK.finditer(steps_text[start:end])]
        if blocks:
            found[n] = "\n".join(blocks)
    return found


def test_the_page_has_a_command_block_for_every_step_that_sends_something():
    steps = walkthrough(DOC.read_text(encoding="utf-8"))
    assert sorted(steps) == [2, 3, 4, 5, 7, 8, 9]
    for n, block in steps.items():
        for line in block.splitlines():
            assert re.match(r"(landmark-kaggle|kaggle|for k in) ", line), f"step {n}: {line!r} is not a command"


def _sent(world, since: int) -> dict[str, list[dict]]:
    """method name -> request bodies the server got after request number ``since``."""
    out: dict[str, list[dict]] = {}
    for r in world.requests[since:]:
        if r["method"] == "POST":
            out.setdefault(r["path"].rsplit("/", 1)[1], []).append(r["body"])
    return out


@pytest.mark.slow
def test_the_walkthrough_runs_word_for_word(tmp_path, kaggle_env, kaggle_server):
    world, seen = kaggle_server
    steps = walkthrough(DOC.read_text(encoding="utf-8"))
    # Logged in with a token only (step 2): the user name comes from Kaggle, through the client.
    env = {k: v for k, v in kaggle_env.items() if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    home = Path(env["HOME"])
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "access_token").write_text(TOKEN + "\n")
    (home / ".kaggle" / "access_token").chmod(0o600)
    root = tmp_path / "checkout"
    root.mkdir()
    # Only what the walk-through itself uploads exists on this Kaggle.
    world.datasets = set()

    def run(n: int) -> tuple[subprocess.CompletedProcess, dict]:
        since = len(seen)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", steps[n]], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"step {n}:\n{steps[n]}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc, _sent(world, since)

    # 2. Log in: the client asks Kaggle whose token it is.
    proc, sent = run(2)
    assert "- username: alice" in proc.stdout and sent["IntrospectToken"] == [{"token": TOKEN}]

    # 3. The wheel dataset: created, since Kaggle does not have it.
    proc, sent = run(3)
    assert len(list((root / "bundles" / "landmark-kaggle-wheel").glob("landmark_kaggle-*.whl"))) == 1
    assert [b["slug"] for b in sent["CreateDataset"]] == ["landmark-kaggle-wheel"]
    assert "CreateDatasetVersion" not in sent and "SaveKernel" not in sent

    # 4. build-embed, its next version, build-write part 1, its output, parts 2..6.
    world.status = {f"{K}build-embed": ("COMPLETE", ""), f"{K}build-write-part-1": ("COMPLETE", "")}
    world.outputs = {f"{K}build-write-part-1": {"tfrec/parts.json": b'{"parts": 6}\n'}}
    proc, sent = run(4)
    pushes = sent["SaveKernel"]
    assert [b["slug"] for b in pushes] == [f"{K}build-embed", f"{K}build-embed", *PARTS]
    embed, embed_again = pushes[0], pushes[1]
    for body in (embed, embed_again):
        assert (body["machineShape"], body["enableGpu"], body["enableInternet"]) == ("NvidiaTeslaT4", True, True)
        assert body["competitionDataSources"] == ["landmark-recognition-2021"]
        assert body["datasetDataSources"] == [f"{K}wheel"]
    assert not embed.get("kernelDataSources") and embed_again["kernelDataSources"] == [f"{K}build-embed"]
    for k, body in enumerate(pushes[2:], start=1):
        assert f'PART = "{k}"' in body["text"] and body["kernelDataSources"] == [f"{K}build-embed"]
        assert body["enableGpu"] is False and body["enableInternet"] is False and not body.get("machineShape")
    assert [(b["kernelSlug"], b.get("versionLabel")) for b in sent["GetKernelSessionStatus"]] == [
        ("landmark-kaggle-build-embed", None), ("landmark-kaggle-build-write-part-1", None)]
    assert json.loads((root / "out" / "build-write-part-1" / "tfrec" / "parts.json").read_text()) == {"parts": 6}

    # 5. Train on the six parts, then the next version: the same parts, the same TPU, and its own output.
    world.status[f"{K}train"] = ("COMPLETE", "")
    proc, sent = run(5)
    first, again = sent["SaveKernel"]
    assert first["slug"] == again["slug"] == f"{K}train"
    assert first["kernelDataSources"] == PARTS and again["kernelDataSources"] == [f"{K}train", *PARTS]
    for body in (first, again):
        assert (body["machineShape"], body["enableTpu"], body["enableGpu"]) == ("TpuV5E8", True, False)
        assert body["datasetDataSources"] == [f"{K}wheel"]

    # 6 is local work (embed-index); what it leaves: the two index folders.
    for name, landmarks in (("index", 4), ("distractors", 0)):
        (root / name).mkdir()
        (root / name / "index.json").write_text(json.dumps({"rows": 8, "landmarks": landmarks}))
        (root / name / "embeddings.npy").write_bytes(name.encode())

    # 7. The model from the train kernel's output, bundled; three datasets created, the wheel versioned.
    weights = os.urandom(64)
    world.outputs[f"{K}train"] = {"model/model.weights.h5": weights, "model/config.json": b"{}",
                                  "model/label_map.csv": b"label,landmark_id,count\n", "model/history.csv": b""}
    proc, sent = run(7)
    assert (root / "bundles" / "landmark-kaggle-model" / "model.weights.h5").read_bytes() == weights
    assert sorted(b["slug"] for b in sent["CreateDataset"]) == [
        "landmark-kaggle-distractors", "landmark-kaggle-index", "landmark-kaggle-model"]
    (version,) = sent["CreateDatasetVersion"]
    assert version["datasetSlug"] == "landmark-kaggle-wheel" and version["body"]["versionNotes"] == "model v1"

    # 8. The submission kernel: GPU, internet off, all four datasets (Kaggle has them all now: none refused).
    world.status[f"{K}submission"] = ("COMPLETE", "")
    world.outputs[f"{K}submission"] = {"submission.csv": CSV, "submission.predict.json": b'{"images": 1}\n'}
    proc, sent = run(8)
    (body,) = sent["SaveKernel"]
    assert body["slug"] == f"{K}submission" and body["enableInternet"] is False
    assert (body["machineShape"], body["enableGpu"], body["enableTpu"]) == ("NvidiaTeslaT4", True, False)
    assert body["datasetDataSources"] == [f"{K}{s}" for s in ("wheel", "model", "index", "distractors")]
    assert (root / "out" / "submission" / "submission.csv").read_bytes() == CSV
    pushed = json.loads((root / "bundles" / "kernels" / "submission" / "pushed.json").read_text())["version"]

    # 9. Submit the version step 8 made, once its status and output were checked.
    proc, sent = run(9)
    assert sent["GetKernelSessionStatus"] == [{"userName": USER, "kernelSlug": "landmark-kaggle-submission",
                                               "versionLabel": f"v{pushed}"}]
    assert sent["CreateCodeSubmission"] == [{
        "competitionName": "landmark-recognition-2021", "kernelOwner": USER, "kernelSlug": "landmark-kaggle-submission",
        "kernelVersion": pushed, "fileName": "submission.csv", "submissionDescription": "v1: B0 + retrieval"}]
    assert world.submissions == 1

    # Every step ran, and no credential travelled anywhere but in the auth header and the token check.
    for r in seen:
        body = json.dumps(r["body"]) if r["method"] == "POST" and not r["path"].endswith("/IntrospectToken") else ""
        assert SECRET not in body and TOKEN not in body, r["path"]
