"""User-facing errors of the data owner.

Every problem the user can fix (a missing file, a bad label, an empty split, a bad template, a budget too
small, a cluster that does not answer) is raised as :class:`DataOwnerError` with a message that names the
file, line or option; the CLI prints the message and exits non-zero without a traceback.
"""

from __future__ import annotations


class DataOwnerError(Exception):
    """A problem with the user's input or environment, reported as one clear message."""


class ClusterUnavailableError(DataOwnerError):
    """The secure backend could not reach (or lost) the compute cluster."""
