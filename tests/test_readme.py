"""README's two commands are the ones the project really runs: CI runs command (b) verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[:2]


def test_ci_runs_readme_command_b_verbatim():
    _, command_b = readme_commands()
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert command_b in ci_lines
    assert "pytest" in command_b and "|| true" not in command_b


def test_command_a_sets_up_and_runs_the_main_job():
    command_a, _ = readme_commands()
    assert command_a.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert "landmark-kaggle" in command_a


def test_the_readme_is_a_map_and_its_links_lead_somewhere():
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") <= 150, "the README is the two commands plus a map: the rest belongs in docs/"
    links = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", text)
    pages = {"docs/data.md", "docs/training.md", "docs/inference.md", "docs/kaggle.md", "docs/benchmarks.md"}
    assert pages <= set(links)
    assert not [link for link in links if not (ROOT / link).is_file()]
