"""The Kaggle loop after the push: `kernels submit`, `status`, `output`, and a push whose sources Kaggle refused.

Each runs our CLI, which runs the real kaggle client against the recording
server of ``kaggle_server.py`` (fixtures in conftest); the assertions read what
the server received and what came back.
"""

import json

from helpers import run_cli

SUBMISSION = "alice/landmark-kaggle-submission"


def _cli(args, env, cwd):
    return run_cli("kernels", *args, env=env, cwd=cwd, timeout=300)


CSV = b"id,landmarks\n0123456789abcdef,1000 0.9\n"


def test_submit_takes_the_version_the_last_push_made(tmp_path, kaggle_env, kaggle_server):
    world, _ = kaggle_server
    pushed = tmp_path / "k"
    proc = _cli(["push", "submission", "--out", pushed], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert json.loads((pushed / "submission" / "pushed.json").read_text()) == {
        "kernel": SUBMISSION, "version": 7, "folder": str(pushed / "submission"), "accelerator": "NvidiaTeslaT4",
        "kernel_args": None, "shards": None, "kernel_sources": [],
        "dataset_sources": [f"alice/{s}" for s in ("landmark-kaggle-wheel", "landmark-kaggle-model",
                                                    "landmark-kaggle-index", "landmark-kaggle-distractors")]}
    world.status = {f"{SUBMISSION}/v7": ("COMPLETE", "")}
    world.outputs = {f"{SUBMISSION}/v7": {"submission.csv": CSV, "submission.predict.json": b"{}"}}
    proc = _cli(["submit", "--pushed", pushed, "--message", "first try"], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # Version 7's own status and output were asked for, and only its submission.csv fetched.
    assert world.posts("GetKernelSessionStatus") == [{"userName": "alice", "kernelSlug": "landmark-kaggle-submission",
                                                      "versionLabel": "v7"}]
    assert [r["path"] for r in world.requests if r["method"] == "GET"] == [
        f"http://localhost/output/{SUBMISSION}/v7/submission.csv"]
    (sent,) = world.posts("CreateCodeSubmission")
    assert sent == {"competitionName": "landmark-recognition-2021", "kernelOwner": "alice",
                    "kernelSlug": "landmark-kaggle-submission", "kernelVersion": 7, "fileName": "submission.csv",
                    "submissionDescription": "first try"}
    assert "Submission ref: 50001" in proc.stdout and "4 submissions remaining today" in proc.stdout
    assert f"submitted {SUBMISSION} version 7 (submission.csv)" in proc.stdout
    # A version Kaggle does not have: the client's 404 becomes one line, exit 2.
    world.status[SUBMISSION] = ("COMPLETE", "")
    world.outputs[SUBMISSION] = {"submission.csv": CSV}
    proc = _cli(["submit", "--version", 9, "--message", "m"], kaggle_env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Could not find competition or notebook" in proc.stderr
    assert len(world.posts("CreateCodeSubmission")) == 2 and world.submissions == 1


def test_submit_sends_only_a_complete_version_that_wrote_the_file(tmp_path, kaggle_env, kaggle_server):
    world, _ = kaggle_server
    world.versions[SUBMISSION] = 8
    cases = [  # (status of version 8, its output files, what submit says)
        (("RUNNING", ""), {}, f"{SUBMISSION} version 8 is running, not complete: nothing submitted"),
        (("ERROR", "Your notebook tried to allocate more memory"), {},
         f"{SUBMISSION} version 8 is error (Your notebook tried to allocate more memory), not complete"),
        (("COMPLETE", ""), {"submission.predict.json": b"{}"},
         f"{SUBMISSION} version 8 is complete but its output holds no submission.csv: nothing submitted"),
    ]
    for state, files, said in cases:
        world.status = {f"{SUBMISSION}/v8": state, SUBMISSION: ("COMPLETE", "")}
        world.outputs = {f"{SUBMISSION}/v8": files, SUBMISSION: {"submission.csv": CSV}}
        proc = _cli(["submit", "--version", 8, "--message", "m"], kaggle_env, tmp_path)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert world.posts("CreateCodeSubmission") == [] and world.submissions == 0
    world.status[f"{SUBMISSION}/v8"] = ("COMPLETE", "")
    world.outputs[f"{SUBMISSION}/v8"] = {"submission.csv": CSV}
    proc = _cli(["submit", "--version", 8, "--message", "m"], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert [b["kernelVersion"] for b in world.posts("CreateCodeSubmission")] == [8]


def test_submit_with_no_version_known_sends_nothing(tmp_path, kaggle_env, kaggle_server):
    world, seen = kaggle_server
    proc = _cli(["submit", "--pushed", tmp_path / "nothing-pushed"], kaggle_env, tmp_path)
    assert proc.returncode == 2 and "no pushed version recorded" in proc.stderr and "--version N" in proc.stderr
    proc = _cli(["submit", "--kernel", "bob/other-kernel"], kaggle_env, tmp_path)
    assert proc.returncode == 2 and "give --version N" in proc.stderr
    assert seen == []


def test_status_says_the_state_and_fails_when_the_kernel_failed(tmp_path, kaggle_env, kaggle_server):
    world, _ = kaggle_server
    world.status = {SUBMISSION: ("COMPLETE", ""),
                    "alice/landmark-kaggle-train": ("ERROR", "Your notebook tried to allocate more memory")}
    proc = _cli(["status", "submission"], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"{SUBMISSION}: complete")
    assert world.posts("GetKernelSessionStatus") == [{"userName": "alice", "kernelSlug": "landmark-kaggle-submission"}]
    proc = _cli(["status", "train"], kaggle_env, tmp_path)
    assert proc.returncode == 1
    assert "alice/landmark-kaggle-train: error: Your notebook tried to allocate more memory" in proc.stdout
    # A kernel the user cannot see: Kaggle answers 403; one line, exit 2.
    proc = _cli(["status", "carol/secret-kernel"], kaggle_env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "carol/secret-kernel" in proc.stderr


def test_output_downloads_every_file_and_the_log(tmp_path, kaggle_env, kaggle_server):
    world, seen = kaggle_server
    csv = CSV
    world.outputs = {SUBMISSION: {"submission.csv": csv, "submission.predict.json": b'{"images": 1}\n'}}
    world.logs = {SUBMISSION: "landmark-kaggle: installed landmark_kaggle-0.1.0-py3-none-any.whl\n"}
    proc = _cli(["output", "submission", "--out", tmp_path / "got"], kaggle_env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    got = tmp_path / "got"
    assert (got / "submission.csv").read_bytes() == csv
    assert json.loads((got / "submission.predict.json").read_text()) == {"images": 1}
    assert "installed landmark_kaggle" in (got / "landmark-kaggle-submission.log").read_text()
    assert f"{SUBMISSION}: 3 files into {got}" in proc.stdout
    assert [r["path"] for r in seen if r["method"] == "GET"] == [
        f"http://localhost/output/{SUBMISSION}/submission.csv",
        f"http://localhost/output/{SUBMISSION}/submission.predict.json"]


def test_push_fails_when_kaggle_refuses_a_source(tmp_path, kaggle_env, kaggle_server):
    world, _ = kaggle_server
    # The index and distractor datasets were never uploaded: Kaggle makes the version without them.
    world.datasets = {"alice/landmark-kaggle-wheel", "alice/landmark-kaggle-model"}
    proc = _cli(["push", "submission", "--out", tmp_path / "k"], kaggle_env, tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stderr and "refused these sources" in proc.stderr
    assert "alice/landmark-kaggle-index" in proc.stderr and "alice/landmark-kaggle-distractors" in proc.stderr
    assert not (tmp_path / "k" / "submission" / "pushed.json").exists()  # nothing to submit from this push
    # The competition's rules not accepted (or a wrong slug): the same.
    world.datasets, world.competitions = None, ()
    proc = _cli(["push", "submission", "--out", tmp_path / "k"], kaggle_env, tmp_path)
    assert proc.returncode == 2 and "competition ['landmark-recognition-2021']" in proc.stderr
    world.competitions = ("landmark-recognition-2021",)
    proc = _cli(["push", "submission", "--out", tmp_path / "k"], kaggle_env, tmp_path)
    assert proc.returncode == 0 and "pushed alice/landmark-kaggle-submission version 9" in proc.stdout
