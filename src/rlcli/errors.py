"""The exceptions meant for users. The CLI turns these, and only these, into `error: ...` lines."""

from __future__ import annotations


class RlError(Exception):
    """A failure the user can act on; its message is printed as one line."""

    exit_code = 1


class UsageError(RlError):
    """The command line itself is wrong (a bad option value, a malformed size)."""

    exit_code = 2


class ModelNotFoundError(RlError):
    """A model name that the registry does not know."""


class CheckpointError(RlError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class ModelRunError(RlError):
    """A model that fails to build or to run at the requested input."""
