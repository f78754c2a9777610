"""User-facing errors.

Every problem a user can cause (a bad path, a tokenizer that does not parse, an output that exists) is raised as a
`TokenAdaptError` whose message names the problem and the fix in one paragraph. The CLI prints that message and
exits non-zero without a traceback. A `PermissionError` (an input this user may not read) is treated the same
way by the CLI; anything else reaching it is a bug and keeps its traceback.
"""

from __future__ import annotations


class TokenAdaptError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} {fix}")


class InputError(TokenAdaptError):
    """An input (path, name, file) is missing, unreadable or malformed."""


class OutputError(TokenAdaptError):
    """The output location cannot be written as asked."""


class ArtifactError(TokenAdaptError):
    """A built-in artifact could not be fetched, assembled or verified."""
