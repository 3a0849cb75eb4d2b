"""What the benchmarks share: settings from ``--profile``, ``--home`` and ``--set`` options."""

from __future__ import annotations

import os


def bench_settings(profile: str | None, home: str | None, sets: list[str]):
    """Settings of a benchmark run; ``home`` (if given) is also exported as LOOKALIKE_HOME, so
    the processes the benchmark starts (Spark workers, Horovod ranks) use it too."""
    from lookalike.cli import _overrides
    from lookalike.config import load_settings

    overrides = _overrides(sets)
    if home:
        os.environ["LOOKALIKE_HOME"] = home
        overrides["home"] = home
    return load_settings(profile, overrides)
