"""The error type for mistakes a user can fix; light to import, so the CLI can catch it before loading torch."""

from typing import Any, NoReturn


class UserError(ValueError):
    """Something the user can fix (a file, a flag, a model); the CLI prints its message as one line."""


def raise_on_usage_error(parser: Any, prefix: str = "", error: type[UserError] = UserError) -> Any:
    """Make an argparse parser raise `error` on a bad command line instead of printing its usage and exiting.

    A bad flag is a user error like any other: one line on stderr (`kdistill: error: PREFIX: MESSAGE`), not argparse's
    usage dump (150 flags for the run config). Returns the parser.
    """

    def fail(message: str) -> NoReturn:
        raise error(f"{prefix}: {message}" if prefix else message)

    parser.error = fail
    return parser
