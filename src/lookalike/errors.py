"""What a user can fix: asked for something that is not there yet, or named what does not exist.

The command line (:mod:`lookalike.cli`) prints a :class:`UsageError` as one line saying what to
do, with no traceback, and exits 1; a library caller gets a ``ValueError`` as before. Nothing here
imports the rest of the package.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Wrong order or wrong name: ``no finished 'train' run yet: run `lookalike train` first``."""
