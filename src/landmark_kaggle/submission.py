"""Competition files: ``submission.csv`` and the solution CSV, read strictly, written exactly, scored.

``submission.csv`` has the header ``id,landmarks`` and one row per test image;
``landmarks`` is ``"<landmark_id> <confidence>"`` or empty (no prediction).
A solution CSV has ``id,landmarks[,Usage]``: ``landmarks`` lists the image's
landmark ids separated by spaces (empty: the image shows no landmark) and
``Usage`` is Public, Private or Ignored; Ignored rows are left out of every score.

Every problem is reported with the file and the 1-based line (line 1 is the
header). Reading is strict: the first bad row raises ``SubmissionError``
(a ``UserError``) with the number of bad rows in all. ``lenient=True`` drops
bad rows instead, describes each in the ``dropped`` list the caller passes and
warns with the count, so nothing is lost silently. Rows are read with the
``csv`` module (exact line numbers, a wrong field count is one bad row, not a
failed file) and checked with vectorised pandas string operations.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kaggle.clibase import UserError
from landmark_kaggle.gld import ID_PATTERN
from landmark_kaggle.metrics import (
    GroundTruth,
    MetricError,
    correct_predictions,
    global_average_precision,
    top1_accuracy,
)

SUBMISSION_COLUMNS = ["id", "landmarks"]
USAGES = ("Public", "Private", "Ignored")


class SubmissionError(UserError):
    """A bad submission or solution file; the message names the file and the row."""


def _read_rows(path: Path, required: list[str], optional: list[str]) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """CSV → (frame of str columns + ``line``, [(line, reason)] for rows with the wrong number of fields)."""
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise SubmissionError(f"{path}: the file is empty (expected header {','.join(required)})")
        missing = [c for c in required if c not in header]
        unknown = [c for c in header if c not in required + optional]
        if missing or unknown or len(set(header)) != len(header):
            raise SubmissionError(f"{path}: line 1: header {','.join(header)!r} is not "
                                  f"{','.join(required)}" + (f"[,{','.join(optional)}]" if optional else ""))
        rows, lines, structural = [], [], []
        for row in reader:
            if len(row) == len(header):
                rows.append(row)
                lines.append(reader.line_num)
            else:
                structural.append((reader.line_num, f"has {len(row)} field(s), expected {len(header)}"))
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame = frame.astype({c: str for c in header}) if rows else pd.DataFrame({c: pd.Series(dtype=str) for c in header})
    frame["line"] = np.asarray(lines, dtype=np.int64)
    return frame, structural


def _settle(path: Path, frame: pd.DataFrame, reasons: pd.Series, structural: list[tuple[int, str]],
            lenient: bool, dropped: list[str] | None) -> pd.DataFrame:
    """Raise on the first bad row (strict) or drop and record every bad row (lenient)."""
    bad = reasons.notna().to_numpy()
    problems = sorted(structural + list(zip(frame["line"].to_numpy()[bad].tolist(), reasons[bad].tolist(),
                                            strict=True)))
    if not problems:
        return frame
    if not lenient:
        line, reason = problems[0]
        raise SubmissionError(f"{path}: line {line}: {reason} ({len(problems)} bad row(s) in all; "
                              f"--lenient drops and counts them)")
    if dropped is not None:
        dropped.extend(f"{path}: line {line}: {reason}" for line, reason in problems)
    warnings.warn(f"{path}: dropped {len(problems)} bad row(s)", stacklevel=3)
    return frame[~bad].reset_index(drop=True)


def _first_reason(checks: list[tuple[np.ndarray, pd.Series]], n: int) -> pd.Series:
    """Per row, the message of the first failed check (None when every check passes)."""
    reasons = pd.Series([None] * n, dtype=object)
    for failed, messages in checks:
        take = failed & reasons.isna().to_numpy()
        reasons[take] = messages[take]
    return reasons


def _show(values) -> pd.Series:
    # Not .astype(str): pandas' string dtype keeps NaN missing, and a missing message would hide the bad row.
    return pd.Series([str(v) for v in np.asarray(values).tolist()], dtype=object)


def _id_check(ids: pd.Series) -> tuple[np.ndarray, pd.Series]:
    return ~ids.str.fullmatch(ID_PATTERN).to_numpy(bool), "id " + ids.map(repr) + " is not 16 lowercase hex characters"


def read_submission(path: str | os.PathLike, *, lenient: bool = False,
                    dropped: list[str] | None = None) -> pd.DataFrame:
    """``submission.csv`` → frame ``id`` (str), ``landmark_id`` (int64, -1: no prediction),
    ``confidence`` (float64, NaN: no prediction), ``line`` (int64, the row's line in the file).

    Rejected: a malformed id, more than one prediction in a row, a landmarks
    field that is not ``"<landmark_id> <confidence>"``, a negative or
    non-integer landmark id, a non-numeric, infinite or NaN confidence.
    Ids are checked against the test set by ``validate_submission``.
    """
    path = Path(path)
    frame, structural = _read_rows(path, SUBMISSION_COLUMNS, [])
    ids = frame["id"].str.strip()
    text = frame["landmarks"].str.strip()
    tokens = text.str.split()
    count = tokens.str.len().fillna(0).to_numpy(np.int64)
    lid_text = tokens.str[0].fillna("")
    conf_text = tokens.str[1].fillna("")
    conf = pd.to_numeric(conf_text, errors="coerce").to_numpy(np.float64)
    spelled_nan = conf_text.str.lower().isin(["nan", "+nan", "-nan"]).to_numpy()
    shown = "landmarks " + text.map(repr)
    two = count == 2
    reasons = _first_reason([
        _id_check(ids),
        (count > 2, shown + " holds " + _show(count) + " values: more than one prediction in a row"),
        (count == 1, shown + " must be '<landmark_id> <confidence>' or empty"),
        (two & lid_text.str.fullmatch(r"-\d+").to_numpy(bool), shown + " has a negative landmark id"),
        (two & ~lid_text.str.fullmatch(r"\d+").to_numpy(bool), shown + " has a landmark id that is not an integer"),
        (two & np.isnan(conf) & ~spelled_nan, shown + " has a confidence that is not a number"),
        (two & ~np.isfinite(conf), shown + " has an infinite or NaN confidence"),
    ], len(frame))
    parsed = pd.DataFrame({
        "id": ids,
        "landmark_id": np.where(two, pd.to_numeric(lid_text.where(two, "-1"), errors="coerce"), -1),
        "confidence": np.where(two, conf, np.nan),
        "line": frame["line"],
    })
    parsed = _settle(path, parsed, reasons, structural, lenient, dropped)
    parsed["landmark_id"] = parsed["landmark_id"].fillna(-1).astype(np.int64)
    return parsed


def _format_confidence(value: float) -> str:
    # repr is the shortest text that parses back to the same float: the round trip is exact.
    return repr(float(value))


def write_submission(path: str | os.PathLike, ids: Sequence[str], landmark_ids: Sequence[int | None],
                     confidences: Sequence[float | None]) -> Path:
    """Write ``submission.csv``: one row per id, ``"<landmark_id> <confidence>"`` or empty.

    ``landmark_ids[i]`` of -1 or None writes an empty prediction (its
    confidence is ignored). Ids must be unique and 16 lowercase hex; written
    confidences must be finite. The file appears atomically (temp + rename).
    """
    path = Path(path)
    ids = pd.Series(list(ids), dtype=object).astype(str)
    lids = pd.to_numeric(pd.Series(list(landmark_ids), dtype=object), errors="coerce")
    conf = pd.to_numeric(pd.Series(list(confidences), dtype=object), errors="coerce").to_numpy(np.float64)
    if not len(ids) == len(lids) == len(conf):
        raise SubmissionError(f"{path}: {len(ids)} ids, {len(lids)} landmark ids and {len(conf)} confidences")
    lids = lids.fillna(-1).to_numpy()
    has = lids >= 0
    reasons = _first_reason([
        _id_check(ids),
        (ids.duplicated().to_numpy(), "id " + ids.map(repr) + " appears more than once"),
        (lids != np.round(lids), "landmark id " + _show(lids) + " is not an integer"),
        (lids < -1, "landmark id " + _show(lids) + " is negative"),
        (has & ~np.isfinite(conf), "confidence " + _show(conf) + " is not finite"),
    ], len(ids))
    if reasons.notna().any():
        pos = int(np.flatnonzero(reasons.notna().to_numpy())[0])
        raise SubmissionError(f"{path}: cannot write row {pos} (id {ids.iloc[pos]!r}): {reasons.iloc[pos]} "
                              f"({int(reasons.notna().sum())} bad row(s) in all)")
    cells = [f"{int(lid)} {_format_confidence(c)}" if h else ""
             for lid, c, h in zip(lids.tolist(), conf.tolist(), has.tolist(), strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        handle.write("id,landmarks\n")
        handle.writelines(f"{i},{cell}\n" for i, cell in zip(ids.tolist(), cells, strict=True))
    os.replace(tmp, path)
    return path


def read_solution(path: str | os.PathLike) -> pd.DataFrame:
    """Solution CSV → frame ``id`` (str), ``landmarks`` (tuple of int; empty: no landmark),
    ``usage`` (Public/Private/Ignored; "" when the file has no Usage column), ``line``.

    Strict: any bad row (malformed or repeated id, a landmark that is not a
    non-negative integer, an unknown Usage) raises with its line.
    """
    path = Path(path)
    frame, structural = _read_rows(path, SUBMISSION_COLUMNS, ["Usage"])
    ids = frame["id"].str.strip()
    text = frame["landmarks"].str.strip()
    usage = frame["Usage"].str.strip() if "Usage" in frame else pd.Series([""] * len(frame), dtype=str)
    reasons = _first_reason([
        _id_check(ids),
        (ids.duplicated().to_numpy(), "id " + ids.map(repr) + " appears more than once"),
        (~text.str.fullmatch(r"(\d+(\s+\d+)*)?").to_numpy(bool),
         "landmarks " + text.map(repr) + " must be landmark ids (non-negative integers) separated by spaces"),
        (("Usage" in frame) & ~usage.isin(USAGES).to_numpy(),
         "Usage " + usage.map(repr) + f" is not one of {', '.join(USAGES)}"),
    ], len(frame))
    _settle(path, frame, reasons, structural, lenient=False, dropped=None)
    if frame.empty:
        raise SubmissionError(f"{path}: the solution has a header but no rows")
    landmarks = [tuple(int(x) for x in t.split()) for t in text.tolist()]
    return pd.DataFrame({"id": ids, "landmarks": pd.Series(landmarks, dtype=object), "usage": usage,
                         "line": frame["line"]})


def _row_name(frame: pd.DataFrame, pos: int, source: str) -> str:
    if "line" in frame:
        return f"{source}: line {int(frame['line'].iloc[pos])}"
    return f"{source}: row {pos}"


def validate_submission(submission: pd.DataFrame, test_ids: Sequence[str], *, source: str | os.PathLike = "submission",
                        lenient: bool = False, dropped: list[str] | None = None) -> pd.DataFrame:
    """Check a parsed submission (``read_submission``'s frame) against the test ids.

    Strict: a duplicate id, an id not in ``test_ids``, or a test id without a
    row raises ``SubmissionError`` naming the row (or the missing id).
    Lenient: repeats after the first and unknown ids are dropped, missing ids
    are added as empty predictions, each is described in ``dropped`` and the
    count is warned. Returns the frame to score, one row per test id.
    """
    source = str(source)
    frame = submission.reset_index(drop=True)
    ids = frame["id"].astype(str)
    known = pd.Index(pd.Series(list(test_ids), dtype=object).astype(str))
    problems: list[str] = []
    repeated = ids.duplicated().to_numpy()
    unknown = ~ids.isin(known).to_numpy()
    for pos in np.flatnonzero(repeated | unknown):
        what = "appears more than once" if repeated[pos] else "is not a test image"
        problems.append(f"{_row_name(frame, int(pos), source)}: id {ids.iloc[pos]!r} {what}")
    missing = known[~known.isin(ids)]
    problems += [f"{source}: test image {m!r} has no row" for m in missing]
    if not problems:
        return frame
    if not lenient:
        raise SubmissionError(f"{problems[0]} ({int(repeated.sum())} repeated, {int(unknown.sum())} unknown, "
                              f"{len(missing)} missing id(s) in all)")
    if dropped is not None:
        dropped.extend(problems)
    warnings.warn(f"{source}: dropped {int((repeated | unknown).sum())} row(s), "
                  f"{len(missing)} test image(s) had no row (scored as no prediction)", stacklevel=2)
    kept = frame[~(repeated | unknown)]
    filler = pd.DataFrame({"id": missing.to_numpy(dtype=object), "landmark_id": -1, "confidence": np.nan})
    return pd.concat([kept, filler], ignore_index=True)


def solution_truth(solution: pd.DataFrame) -> GroundTruth:
    """``read_solution``'s frame → the ``GroundTruth`` the metrics take (all rows, Usage not applied)."""
    return GroundTruth.build(solution["id"].to_numpy(dtype=object), solution["landmarks"].tolist())


def score(solution: pd.DataFrame, submission: pd.DataFrame, *, ignore_nonlandmark: bool = False) -> dict:
    """GAP over all, Public and Private rows, top-1 accuracy and counts, as a JSON-ready dict.

    ``solution`` is ``read_solution``'s frame, ``submission`` ``read_submission``'s
    (validated strictly here against the solution's ids, Ignored rows included).
    Ignored rows are left out of every figure. A figure whose subset has no
    landmark image is None; a solution with no landmark image at all outside
    Ignored rows raises ``MetricError``. Keys: gap, gap_public, gap_private,
    top1, n_images, n_landmark_images, n_predictions, n_correct,
    n_public, n_private, n_ignored.
    """
    validate_submission(submission, solution["id"].tolist())
    usage = solution["usage"].to_numpy(dtype=str)
    truth = solution_truth(solution)
    scored = truth.subset(usage != "Ignored")
    preds = submission[submission["landmark_id"].to_numpy() >= 0]
    preds = preds[preds["id"].isin(scored.index)]
    args = (preds["id"].to_numpy(dtype=object), preds["landmark_id"].to_numpy(), preds["confidence"].to_numpy())
    if scored.num_landmark_images == 0:
        raise MetricError(f"no landmark image among the {len(scored)} scored solution rows "
                          f"({int((usage == 'Ignored').sum())} Ignored), so GAP is undefined")

    def gap_of(name: str) -> float | None:
        part = truth.subset(usage == name)
        if part.num_landmark_images == 0:
            return None
        inside = preds["id"].isin(part.index).to_numpy()
        return global_average_precision(*(a[inside] for a in args), part, ignore_nonlandmark=ignore_nonlandmark)

    return {
        "gap": global_average_precision(*args, scored, ignore_nonlandmark=ignore_nonlandmark),
        "gap_public": gap_of("Public"),
        "gap_private": gap_of("Private"),
        "top1": top1_accuracy(args[0], args[1], scored),
        "n_images": len(scored),
        "n_landmark_images": scored.num_landmark_images,
        "n_predictions": len(preds),
        "n_correct": int(correct_predictions(args[0], args[1], scored).sum()),
        "n_public": int((usage == "Public").sum()),
        "n_private": int((usage == "Private").sum()),
        "n_ignored": int((usage == "Ignored").sum()),
    }
