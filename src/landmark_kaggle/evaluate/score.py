"""Score a submission.csv against a solution CSV the way the competition does (GAP, micro-AP).

The submission is checked against the solution's ids (missing, unknown and
repeated ids, malformed rows); Ignored solution rows are left out of every
figure. --json prints one JSON object with these keys:

  gap                GAP over all Public + Private rows (what the leaderboard would show overall)
  gap_public         GAP over Public rows only
  gap_private        GAP over Private rows only
  top1               share of landmark images whose prediction is right (no prediction: wrong)
  n_images           scored images (solution rows that are not Ignored)
  n_landmark_images  scored images that show a landmark (M, the GAP denominator)
  n_predictions      non-empty predictions on scored images
  n_correct          of those, the right ones
  n_public, n_private, n_ignored   solution rows by Usage
  n_dropped          submission rows --lenient dropped (bad, unknown or repeated id; 0 when strict)
  n_filled           test images --lenient scored as "no prediction" because no valid row names them

A figure whose subset has no landmark image (e.g. no Public rows, or a
solution without a Usage column) is null, not 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from landmark_kaggle.errors import UserError
from landmark_kaggle.evaluate.metrics import MetricError
from landmark_kaggle.evaluate.submission import read_solution, read_submission, score, validate_submission

SHOW_DROPPED = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solution", required=True, help="solution CSV: id,landmarks[,Usage]")
    parser.add_argument("--submission", required=True, help="submission CSV: id,landmarks")
    parser.add_argument("--json", action="store_true", help="print one JSON object (keys above) instead of text")
    parser.add_argument("--lenient", action="store_true",
                        help="drop bad submission rows (and fill missing ids as empty) instead of failing; "
                             "each is listed on stderr and counted in n_dropped")
    parser.add_argument("--ignore-nonlandmark", action="store_true",
                        help="leave predictions on non-landmark images out of the ranking "
                             "(the competition counts them as misses)")


def _text(result: dict) -> str:
    def gap(value: float | None, rows: int | None = None) -> str:
        shown = "n/a (no landmark image in this subset)" if value is None else f"{value:.6f}"
        return shown if rows is None else f"{shown}  ({rows} rows)"

    return "\n".join([
        f"GAP          {gap(result['gap'], result['n_images'])}",
        f"GAP public   {gap(result['gap_public'], result['n_public'])}",
        f"GAP private  {gap(result['gap_private'], result['n_private'])}",
        f"top-1        {result['top1']:.6f}  ({result['n_correct']} right of {result['n_landmark_images']} "
        "landmark images)",
        f"score: {result['n_images']} images ({result['n_landmark_images']} with a landmark, "
        f"{result['n_ignored']} Ignored), {result['n_predictions']} predictions, "
        f"{result['n_dropped']} bad rows dropped, {result['n_filled']} missing images scored as empty",
    ])


def run(args: argparse.Namespace) -> int:
    solution = read_solution(args.solution)
    dropped: list[str] = []
    with warnings.catch_warnings():
        # The dropped rows are listed below; the library's summary warning would repeat them.
        warnings.simplefilter("ignore")
        submission = read_submission(args.submission, lenient=args.lenient, dropped=dropped)
        filled = len(set(solution["id"]) - set(submission["id"]))
        submission = validate_submission(submission, solution["id"].tolist(), source=args.submission,
                                         lenient=args.lenient, dropped=dropped)
    try:
        result = score(solution, submission, ignore_nonlandmark=args.ignore_nonlandmark)
    except MetricError as exc:
        raise UserError(f"{args.solution}: {exc}") from None
    result["n_dropped"] = len(dropped) - filled
    result["n_filled"] = filled
    for line in dropped[:SHOW_DROPPED]:
        print(f"lenient: {line}", file=sys.stderr)
    if len(dropped) > SHOW_DROPPED:
        print(f"lenient: ... and {len(dropped) - SHOW_DROPPED} more", file=sys.stderr)
    print(json.dumps(result) if args.json else _text(result))
    return 0
