"""User-facing errors: one sentence, no traceback (the CLI prints them unless --debug)."""


class DistillError(Exception):
    """A problem the user can fix: the message names the file or key and the fix."""
