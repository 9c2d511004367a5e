"""DistillError: the user's mistakes, shown by the CLI as one line."""


class DistillError(Exception):
    """A mistake the user can fix; the message says what and how, in one line."""
