"""The one exception type that means "the user's input is wrong", shared by every stage.

A ``UserError`` is printed by the command line as one clear line naming the
file and row (no traceback) and exits with status 2. Library modules raise it;
they never import the command-line machinery to do so.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one clear message, no traceback."""
