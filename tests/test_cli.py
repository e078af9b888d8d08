"""The two command lines: every subcommand listed with one line, and stats end to end on the sample."""

import json
import re
import subprocess
import sys

from helpers import run_cli

from landmark_kaggle.cli import COMMANDS, main
from tfrec_builder.cli import COMMANDS as BUILDER_COMMANDS


def listed_commands(help_text):
    section = help_text.split("commands:", 1)[1]
    return re.findall(r"^    ([a-z][a-z-]*)\s", section, flags=re.M)


def test_help_lists_every_subcommand():
    out = run_cli("--help")
    assert out.returncode == 0
    assert listed_commands(out.stdout) == list(COMMANDS)
    assert {"sample", "stats"} <= set(COMMANDS)
    assert all(help_line and "\n" not in help_line for _, help_line in COMMANDS.values())


def test_builder_help_lists_every_subcommand():
    out = run_cli("--help", builder=True)
    assert out.returncode == 0
    assert listed_commands(out.stdout) == list(BUILDER_COMMANDS)


def test_sample_then_stats_json(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "s"), "--classes", "5", "--max-per-class", "25"]) == 0
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "s"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert sum(stats["buckets"].values()) == stats["classes"] == 5
    assert stats["images"] == sum(1 for _ in (tmp_path / "s" / "train").rglob("*.jpg"))
    assert (tmp_path / "s" / "stats" / "images_per_landmark.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "train.csv").write_text("id,landmark_id\nnot-an-id,3\n")
    out = run_cli("stats", str(tmp_path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{tmp_path / 'train.csv'}: line 2: id 'not-an-id'" in out.stderr


def test_no_command_prints_help():
    out = run_cli()
    assert out.returncode == 2 and "commands:" in out.stdout


HEAVY = ("tensorflow", "keras", "torch", "mmseg")
_HELP_PROBE = """
import contextlib, io, sys
from {module} import main
for command in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([command, "--help"])
        except SystemExit:
            pass
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_no_subcommand_help_imports_tensorflow_or_torch():
    for module, commands in (("landmark_kaggle.cli", COMMANDS), ("tfrec_builder.cli", BUILDER_COMMANDS)):
        out = subprocess.run([sys.executable, "-c", _HELP_PROBE.format(module=module, heavy=HEAVY), *commands],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "", f"{module}: some --help imported {out.stdout.strip()}"
