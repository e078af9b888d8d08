"""Tell a few bad images from a systematic failure: many images failing for one and the same reason.

A few corrupt or missing files are normal in a crawled dataset: they are
skipped, counted and listed in the manifest. But when the same reason keeps
coming back (every file truncated by a broken copy, a folder not mounted, a
decoder missing on this machine), counting them as failed and reporting
success would hide the real problem. The rule: a reason is systematic once
more than ``max(10, 5%)`` of the images prepared so far failed with it
(numbers inside a reason are ignored, so "no marker at byte 2" and "byte 7"
are one reason), and a build where every image failed is one too. ``write``
then stops with an error naming the reason, the count and the first files.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

MIN_COUNT = 10
MIN_SHARE = 0.05
SHOW = 5


def reason_key(reason: str) -> str:
    return re.sub(r"\d+", "#", reason)


def threshold(prepared: int) -> float:
    """A reason is systematic when more images than this failed with it."""
    return max(MIN_COUNT, MIN_SHARE * prepared)


class Systematic(Exception):
    """A reason that tripped the rule: ``key`` (numbers masked), ``count``, ``why``, the first ``examples``."""

    def __init__(self, message: str, key: str, count: int, examples: list[tuple[str, str]]):
        super().__init__(message)
        self.key, self.count, self.examples = key, count, examples

    def describe(self, path_of: dict[str, str]) -> str:
        files = ", ".join(path_of.get(i, f"id {i}") for i, _ in self.examples)
        return f"{self}; first files: {files}"


class FailureWatch:
    """Counts failures by reason over prepared images; ``check`` raises ``Systematic`` when the rule trips."""

    def __init__(self):
        self.prepared = 0
        self.by_reason: Counter[str] = Counter()
        self.examples: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def add(self, prepared: int, failed: Iterable[dict]) -> None:
        """``failed``: entries ``{"id", "reason"}`` of a shard state (or of an estimate sample)."""
        self.prepared += prepared
        for f in failed:
            key = reason_key(f["reason"])
            self.by_reason[key] += 1
            if len(self.examples[key]) < SHOW:
                self.examples[key].append((f["id"], f["reason"]))

    def check(self, final: bool = False) -> None:
        if not self.by_reason:
            return
        key, n = self.by_reason.most_common(1)[0]
        failed = sum(self.by_reason.values())
        reason = self.examples[key][0][1]
        if n > threshold(self.prepared):
            message = (f"{n} images failed with the same reason {reason!r} (more than max({MIN_COUNT}, "
                       f"{MIN_SHARE:.0%}) of the {self.prepared} images prepared so far: a problem with the input "
                       "or this machine, not a few bad images)")
        elif final and failed == self.prepared:
            message = f"every one of the {failed} images failed ({n} of them with the reason {reason!r})"
        else:
            return
        raise Systematic(message, key, n, self.examples[key])
