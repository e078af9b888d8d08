"""The command line's side of the settings: the ``--config`` / ``--set`` pair and the duration syntax.

``config.py`` holds the settings themselves; this module holds what a command parses before it has a
``Config``: the two arguments every config-driven command shares, and durations written like
``8h30m`` (``--time-budget``, ``session.time_budget``, ``inference.time_limit``).
"""

from __future__ import annotations

import re
from typing import Any

from landmark_kaggle.errors import UserError


def parse_duration(text) -> float | None:
    """``"8h30m"``, ``"90m"``, ``"45s"``, ``"1h"`` or plain seconds → seconds; empty → None."""
    if text is None or text == "":
        return None
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", s)
    if not s or not m or not any(m.groups()):
        raise UserError(f"time budget {text!r}: write it like 8h30m, 90m, 45s or a number of seconds")
    h, mi, se = (float(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + se


def add_config_arguments(parser: Any) -> None:
    """The ``--config`` / ``--set`` pair every config-driven command shares."""
    parser.add_argument("--config", help="YAML or JSON config file (sections: data, model, train, optim, runtime, "
                                          "session, embeddings, inference)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train.epochs=3 (repeatable)")
