"""``helpers.kill_mid_run``, the kill of every kill-and-resume test: the run is frozen (SIGSTOP) before each look
at its progress, so it dies exactly where the test saw it, and a run that ends first fails the test instead of
passing as a "resume" of a finished run."""

import signal
import subprocess
import sys
import time

import pytest
from helpers import kill_mid_run

# Writes files 00000.out, 00001.out, ... as fast as it can: any write between a look and the kill would show.
WRITER = """
import pathlib, sys
out = pathlib.Path(sys.argv[1])
for i in range(int(sys.argv[2])):
    (out / f"{i:05d}.out").write_text("x")
"""
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, *sys.argv[1:]]).returncode)"


def _count(folder, linger=0.0):
    n = len(list(folder.glob("*.out")))
    time.sleep(linger)  # a slow look (a big state file, a loaded machine): an unfrozen writer would run on
    return n


@pytest.mark.parametrize("group", [False, True])
def test_the_run_dies_exactly_where_it_was_seen(tmp_path, group):
    # With group, a launcher runs the writer, as a kernel's launcher runs its command: both are frozen.
    cmd = [sys.executable, "-c", WRITER, str(tmp_path), "10000000"]
    if group:
        cmd = [sys.executable, "-c", LAUNCHER, *cmd[1:]]
    proc = subprocess.Popen(cmd, start_new_session=group)
    seen = kill_mid_run(proc, lambda: _count(tmp_path, 0.05), lambda n: n >= 200, group=group, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 200 <= seen < 10_000_000 and _count(tmp_path) == seen


def test_a_run_that_ends_first_fails_the_test(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "50"])
    with pytest.raises(AssertionError, match="the run ended \\(exit code 0, .*\\) before the progress wanted"):
        kill_mid_run(proc, lambda: _count(tmp_path), lambda n: n >= 200, timeout=60)
    assert _count(tmp_path) == 50
