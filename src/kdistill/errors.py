"""The error type for mistakes a user can fix; light to import, so the CLI can catch it before loading torch."""


class UserError(ValueError):
    """Something the user can fix (a file, a flag, a model); the CLI prints its message as one line."""
