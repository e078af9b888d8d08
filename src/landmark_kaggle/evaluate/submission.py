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
warns with the count, so nothing is lost silently.

Speed: a file without quotes whose every line has the header's field count is
parsed by pandas' C reader (line = row + 2); anything else goes through the
``csv`` module, which gives exact line numbers and turns a wrong field count
into one bad row instead of a failed file. Checks build boolean masks over all
rows; messages are formatted for the bad rows only.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kaggle.data.gld import hex_id_mask
from landmark_kaggle.errors import UserError
from landmark_kaggle.evaluate.metrics import GroundTruth, MetricError, correct_predictions, global_average_precision
from landmark_kaggle.fileio import atomic_path

SUBMISSION_COLUMNS = ["id", "landmarks"]
USAGES = ("Public", "Private", "Ignored")
# A check: (failed mask over all rows, message for row i); messages are built for failed rows only.
Check = tuple[np.ndarray, Callable[[int], str]]


class SubmissionError(UserError):
    """A bad submission or solution file; the message names the file and the row."""


def _header(path: Path, first_line: str, required: list[str], optional: list[str]) -> list[str]:
    header = [h.strip() for h in next(csv.reader([first_line]), [])]
    if not header:
        raise SubmissionError(f"{path}: the file is empty (expected header {','.join(required)})")
    if [c for c in required if c not in header] or [c for c in header if c not in required + optional] \
            or len(set(header)) != len(header):
        expected = ",".join(required) + (f"[,{','.join(optional)}]" if optional else "")
        raise SubmissionError(f"{path}: line 1: header {','.join(header)!r} is not {expected}")
    return header


def _read_rows(path: Path, required: list[str], optional: list[str]) -> tuple[dict, np.ndarray, list]:
    """CSV → ({column: object array of str}, line numbers, [(line, reason)] for rows with a wrong field count)."""
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SubmissionError(f"{path}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    end_of_header = data.find(b"\n")
    header = _header(path, data[: len(data) if end_of_header < 0 else end_of_header].decode("utf-8"),
                     required, optional)
    raw = np.frombuffer(data, dtype=np.uint8)
    line_ends = np.flatnonzero(raw == ord("\n"))
    if not data.endswith(b"\n"):
        line_ends = np.append(line_ends, len(data))
    commas_per_line = np.diff(np.searchsorted(np.flatnonzero(raw == ord(",")), line_ends), prepend=0)
    if b'"' not in data and (commas_per_line == len(header) - 1).all():
        frame = pd.read_csv(io.BytesIO(data), dtype=object, na_filter=False, encoding="utf-8")
        columns = {c.strip(): frame[c].to_numpy(dtype=object) for c in frame.columns}
        return columns, np.arange(2, len(frame) + 2, dtype=np.int64), []
    rows, lines, structural = [], [], []
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    next(reader)
    for row in reader:
        if len(row) == len(header):
            rows.append(row)
            lines.append(reader.line_num)
        else:
            structural.append((reader.line_num, f"has {len(row)} field(s), expected {len(header)}"))
    table = np.array(rows, dtype=object).reshape(len(rows), len(header))
    return {c: table[:, k] for k, c in enumerate(header)}, np.asarray(lines, dtype=np.int64), structural


def _failures(checks: list[Check], n: int) -> tuple[np.ndarray, list[str]]:
    """Positions of rows that fail a check, and for each the message of its first failed check."""
    code = np.zeros(n, dtype=np.int16)
    for k, (failed, _) in enumerate(checks, start=1):
        code[(code == 0) & failed] = k
    bad = np.flatnonzero(code)
    return bad, [checks[code[i] - 1][1](int(i)) for i in bad]


def _settle(path: Path, lines: np.ndarray, bad: np.ndarray, messages: list[str], structural: list,
            lenient: bool | None, dropped: list[str] | None) -> np.ndarray:
    """Raise on the first bad row (strict), or record every bad row and return the mask of rows to keep.

    ``lenient=None``: strict, for files that have no lenient mode (the error then does not suggest one).
    """
    problems = sorted(structural + list(zip(lines[bad].tolist(), messages, strict=True)))
    keep = np.ones(len(lines), dtype=bool)
    if not problems:
        return keep
    if not lenient:
        line, reason = problems[0]
        hint = "; --lenient drops and counts them" if lenient is not None else ""
        raise SubmissionError(f"{path}: line {line}: {reason} ({len(problems)} bad row(s) in all{hint})")
    if dropped is not None:
        dropped.extend(f"{path}: line {line}: {reason}" for line, reason in problems)
    warnings.warn(f"{path}: dropped {len(problems)} bad row(s)", stacklevel=3)
    keep[bad] = False
    return keep


def _is_uint(texts) -> np.ndarray:
    return np.fromiter((t.isascii() and t.isdigit() for t in texts), dtype=bool, count=len(texts))


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
    columns, lines, structural = _read_rows(path, SUBMISSION_COLUMNS, [])
    ids = np.array([s.strip() for s in columns["id"]], dtype=object)
    cells = columns["landmarks"]
    tokens = [s.split() for s in cells]
    count = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    two = count == 2
    lid_text = np.array([t[0] if len(t) == 2 else "0" for t in tokens], dtype=object)
    conf_text = np.array([t[1] if len(t) == 2 else "0" for t in tokens], dtype=object)
    lid_ok = _is_uint(lid_text)
    negative = np.fromiter((t[:1] == "-" and t[1:].isascii() and t[1:].isdigit() for t in lid_text), dtype=bool,
                           count=len(tokens))
    conf = pd.to_numeric(pd.Series(conf_text, dtype=object), errors="coerce").to_numpy(np.float64)
    spelled_nan = np.zeros(len(tokens), dtype=bool)
    for i in np.flatnonzero(np.isnan(conf)):
        spelled_nan[i] = conf_text[i].lower() in ("nan", "+nan", "-nan")

    def cell(i: int) -> str:
        return f"landmarks {cells[i].strip()!r}"

    bad, messages = _failures([
        (~hex_id_mask(ids), lambda i: f"id {ids[i]!r} is not 16 lowercase hex characters"),
        (count > 2, lambda i: f"{cell(i)} holds {count[i]} values: more than one prediction in a row"),
        (count == 1, lambda i: f"{cell(i)} must be '<landmark_id> <confidence>' or empty"),
        (two & negative, lambda i: f"{cell(i)} has a negative landmark id"),
        (two & ~lid_ok, lambda i: f"{cell(i)} has a landmark id that is not an integer"),
        (two & np.isnan(conf) & ~spelled_nan, lambda i: f"{cell(i)} has a confidence that is not a number"),
        (two & ~np.isfinite(conf), lambda i: f"{cell(i)} has an infinite or NaN confidence"),
    ], len(ids))
    keep = _settle(path, lines, bad, messages, structural, lenient, dropped)
    good = two & keep
    landmark_id = np.full(len(ids), -1, dtype=np.int64)
    landmark_id[good] = lid_text[good].astype(np.int64)
    return pd.DataFrame({"id": ids[keep], "landmark_id": landmark_id[keep],
                         "confidence": np.where(good, conf, np.nan)[keep], "line": lines[keep]})


def write_submission(path: str | os.PathLike, ids: Sequence[str], landmark_ids: Sequence[int | None],
                     confidences: Sequence[float | None]) -> Path:
    """Write ``submission.csv``: one row per id, ``"<landmark_id> <confidence>"`` or empty.

    ``landmark_ids[i]`` of -1 or None writes an empty prediction (its
    confidence is ignored). Ids must be unique and 16 lowercase hex; written
    confidences must be finite. A confidence is written as ``repr(float)``, the
    shortest text that reads back as the same float, so the round trip is
    exact. The file appears atomically (temp + rename).
    """
    path = Path(path)
    ids = np.array([str(i) for i in ids], dtype=object)
    lids = pd.to_numeric(pd.Series(list(landmark_ids), dtype=object), errors="coerce").to_numpy(np.float64)
    conf = pd.to_numeric(pd.Series(list(confidences), dtype=object), errors="coerce").to_numpy(np.float64)
    if not len(ids) == len(lids) == len(conf):
        raise SubmissionError(f"{path}: {len(ids)} ids, {len(lids)} landmark ids and {len(conf)} confidences")
    lids = np.where(np.isnan(lids), -1, lids)
    has = lids >= 0
    bad, messages = _failures([
        (~hex_id_mask(ids), lambda i: f"id {ids[i]!r} is not 16 lowercase hex characters"),
        (pd.Series(ids).duplicated().to_numpy(), lambda i: f"id {ids[i]!r} appears more than once"),
        (lids != np.round(lids), lambda i: f"landmark id {lids[i]} is not an integer"),
        (lids < -1, lambda i: f"landmark id {lids[i]:g} is negative"),
        (has & ~np.isfinite(conf), lambda i: f"confidence {conf[i]} is not finite"),
    ], len(ids))
    if bad.size:
        raise SubmissionError(f"{path}: cannot write row {bad[0]} (id {ids[bad[0]]!r}): {messages[0]} "
                              f"({bad.size} bad row(s) in all)")
    cells = [f"{int(lid)} {c!r}" if h else ""
             for lid, c, h in zip(lids.tolist(), conf.tolist(), has.tolist(), strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        handle.write("id,landmarks\n")
        handle.writelines(f"{i},{c}\n" for i, c in zip(ids.tolist(), cells, strict=True))
    return path


def read_solution(path: str | os.PathLike) -> pd.DataFrame:
    """Solution CSV → frame ``id`` (str), ``landmarks`` (tuple of int; empty: no landmark),
    ``usage`` (Public/Private/Ignored; "" when the file has no Usage column), ``line``.

    Strict: any bad row (malformed or repeated id, a landmark that is not a
    non-negative integer, an unknown Usage) raises with its line.
    """
    path = Path(path)
    columns, lines, structural = _read_rows(path, SUBMISSION_COLUMNS, ["Usage"])
    ids = np.array([s.strip() for s in columns["id"]], dtype=object)
    text = columns["landmarks"]
    tokens = [s.split() for s in text]
    has_usage = "Usage" in columns
    usage = np.array([s.strip() for s in columns["Usage"]] if has_usage else [""] * len(ids), dtype=object)
    landmarks_ok = np.fromiter((all(t.isascii() and t.isdigit() for t in ts) for ts in tokens), dtype=bool,
                               count=len(tokens))
    bad, messages = _failures([
        (~hex_id_mask(ids), lambda i: f"id {ids[i]!r} is not 16 lowercase hex characters"),
        (pd.Series(ids).duplicated().to_numpy(), lambda i: f"id {ids[i]!r} appears more than once"),
        (~landmarks_ok, lambda i: f"landmarks {text[i].strip()!r} must be landmark ids (non-negative integers) "
                                  "separated by spaces"),
        (np.zeros(len(ids), bool) if not has_usage else ~pd.Series(usage).isin(USAGES).to_numpy(),
         lambda i: f"Usage {usage[i]!r} is not one of {', '.join(USAGES)}"),
    ], len(ids))
    _settle(path, lines, bad, messages, structural, lenient=None, dropped=None)
    if len(ids) == 0:
        raise SubmissionError(f"{path}: the solution has a header but no rows")
    landmarks = pd.Series([tuple(map(int, ts)) for ts in tokens], dtype=object)
    return pd.DataFrame({"id": ids, "landmarks": landmarks, "usage": usage, "line": lines})


def _row_name(frame: pd.DataFrame, pos: int, source: str) -> str:
    line = frame["line"].iloc[pos] if "line" in frame else None
    return f"{source}: row {pos}" if line is None or pd.isna(line) else f"{source}: line {int(line)}"


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
    ids = frame["id"].to_numpy(dtype=object)
    known = pd.Index(np.asarray(test_ids, dtype=object))
    position = known.get_indexer(ids)
    unknown = position < 0
    repeated = pd.Series(ids).duplicated().to_numpy() & ~unknown
    missing = known[np.bincount(position[~unknown], minlength=len(known)) == 0]
    if not (unknown.any() or repeated.any() or len(missing)):
        return frame
    problems = [f"{_row_name(frame, int(i), source)}: id {ids[i]!r} "
                f"{'appears more than once' if repeated[i] else 'is not a test image'}"
                for i in np.flatnonzero(unknown | repeated)]
    problems += [f"{source}: test image {m!r} has no row" for m in missing]
    if not lenient:
        raise SubmissionError(f"{problems[0]} ({int(repeated.sum())} repeated, {int(unknown.sum())} unknown, "
                              f"{len(missing)} missing id(s) in all)")
    if dropped is not None:
        dropped.extend(problems)
    warnings.warn(f"{source}: dropped {int((repeated | unknown).sum())} row(s), "
                  f"{len(missing)} test image(s) had no row (scored as no prediction)", stacklevel=2)
    filler = pd.DataFrame({"id": missing.to_numpy(dtype=object), "landmark_id": -1, "confidence": np.nan})
    return pd.concat([frame[~(repeated | unknown)], filler], ignore_index=True)


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
    truth = solution_truth(solution)
    validate_submission(submission, truth.ids)
    # Align the predictions with the solution's rows once; every subset below is then a mask.
    position = truth.index.get_indexer(submission["id"].to_numpy(dtype=object))
    lids = np.full(len(truth), -1, dtype=np.int64)
    conf = np.full(len(truth), np.nan)
    lids[position] = submission["landmark_id"].to_numpy(np.int64)
    conf[position] = submission["confidence"].to_numpy(np.float64)
    usage = solution["usage"].to_numpy(dtype=object)
    ignored = usage == "Ignored"
    scored = truth.subset(~ignored)
    if scored.num_landmark_images == 0:
        raise MetricError(f"no landmark image among the {len(scored)} scored solution rows "
                          f"({int(ignored.sum())} Ignored), so GAP is undefined")

    def gap_of(mask: np.ndarray) -> float | None:
        part = truth.subset(mask)
        if part.num_landmark_images == 0:
            return None
        return global_average_precision(None, lids[mask], conf[mask], part, ignore_nonlandmark=ignore_nonlandmark)

    n_correct = int(correct_predictions(None, lids[~ignored], scored).sum())
    return {
        "gap": gap_of(~ignored),
        "gap_public": gap_of(usage == "Public"),
        "gap_private": gap_of(usage == "Private"),
        "top1": n_correct / scored.num_landmark_images,
        "n_images": len(scored),
        "n_landmark_images": scored.num_landmark_images,
        "n_predictions": int((lids[~ignored] >= 0).sum()),
        "n_correct": n_correct,
        "n_public": int((usage == "Public").sum()),
        "n_private": int((usage == "Private").sum()),
        "n_ignored": int(ignored.sum()),
    }
