"""The real-photo rules table (``benchmarks/quality.py``) compares every rule at the same k (issue 22).

Only the table's plan is checked here (no model): which predict overrides each row runs with. The table
itself is measured by running the script (benchmarks/RESULTS.md, "Quality on real photos").
"""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def _quality():
    spec = importlib.util.spec_from_file_location("quality_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _k_read(sets) -> int:
    """The neighbours a row's overrides make its rule read: rule_neighbours for GLR2020, else topk_neighbours."""
    values = dict(s.split("=", 1) for s in sets)
    key = "inference.rule_neighbours" if "inference.scoring" in values else "inference.topk_neighbours"
    return int(values[key])


def test_every_retrieval_rule_reads_each_k_of_the_table():
    rows = _quality().rules([5, 3])
    retrieval = [r for r in rows if r[0] not in ("cosine kNN-1", "linear, classifier only")]
    by_rule: dict[str, set[int]] = {}
    for rule, shown, _, sets in retrieval:
        k = _k_read(sets)
        assert shown.split()[0] == str(k), (rule, shown, sets)  # the k printed is the k run
        by_rule.setdefault(rule, set()).add(k)
    assert by_rule == {rule: {3, 5} for rule in ("linear + retrieval", "linear + retrieval + non-landmark penalty",
                                                 "glr2020_1st", "glr2020_3rd")}
    # 0 would mean "as published" and give the two GLR rules different k again.
    assert all(_k_read(sets) > 0 for _, _, _, sets in retrieval)


def test_a_single_k_still_runs_the_glr_rules_at_their_published_k_and_marks_it():
    rows = _quality().rules([5])
    glr = {(rule, shown) for rule, shown, _, _ in rows if rule.startswith("glr2020")}
    assert glr == {("glr2020_1st", "5"), ("glr2020_1st", "3 (published)"), ("glr2020_3rd", "5 (published)")}
    # Only the rules that read the non-landmark gallery are marked as needing it.
    needs = {rule for rule, _, gallery, _ in rows if gallery}
    assert needs == {"linear + retrieval + non-landmark penalty", "glr2020_1st"}
