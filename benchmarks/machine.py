"""The machine a benchmark ran on, and how fast it was that hour: a probe beside every result.

Run: .venv/bin/python -m benchmarks.machine   (about 20 s; prints one JSON object)

Timing figures move with the host, not only with the code. On 2026-12-01 this 2-core VM was
restarted at 09:12 and came back on a host where the same TensorFlow inference ran about 4 x
slower than that morning (frozen EfficientNet-Lite1 at 240 px: 11.5-15 images/s against
46-56), while Spark's ingest ran 1.7 x slower: the afternoon's timings could only be called
"not comparable" after the fact. The probe measures the three kinds of work the benchmarks
time, in a few seconds, so two timings are compared only when their probes agree
(BENCHMARKS.md gives the reference of a quiet day):

* ``tf_lite1_240_images_per_s``: frozen EfficientNet-Lite1 at 240 px, batch 32, inference
  only (the photo profile's backbone: embedding, REST queries, and the bulk of fine-tuning);
* ``numpy_gemm_gflops``: float32 1024 x 1024 matrix products (numpy's BLAS: exact search,
  metrics);
* ``python_loop_mops``: a pure-Python loop, millions of iterations per second (what the JVM,
  Spark's Python workers and the serving code's glue feel; a proxy, not Spark itself).

``cpu`` records the CPU's name and its vector extensions (AVX-512 or not changes TensorFlow's
speed by itself), which a VM may change across a restart. TensorFlow turns its oneDNN kernels
on by itself only where AVX512-VNNI, -BF16 or AMX are present; Lookalike turns them on
everywhere (``lookalike.runtime.prefer_onednn``), and ``tf_onednn`` records the switch: on the
AVX2-only host of 2026-12-02 they raised the TensorFlow figure 1.8 x (10.4 -> 19.1 images/s).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from lookalike.runtime import ONEDNN_ENV

#: Vector extensions worth naming: TensorFlow's oneDNN kernels pick their code by these.
ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU's name, logical cores and which of :data:`ISA` it has (Linux ``/proc/cpuinfo``;
    name and cores only elsewhere)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor speaks for all
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "isa": [name for name in ISA if name in flags] if flags else None}


def _median_rate(work, units: float, seconds: float, min_repeats: int = 3) -> float:
    """Units per second of ``work()``, the median of at least ``min_repeats`` timed calls made
    within about ``seconds`` (after one untimed warm-up call)."""
    work()
    rates, deadline = [], time.perf_counter() + seconds
    while len(rates) < min_repeats or time.perf_counter() < deadline:
        started = time.perf_counter()
        work()
        rates.append(units / (time.perf_counter() - started))
    return statistics.median(rates)


def numpy_gemm_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """float32 n x n matrix products through numpy's BLAS, in GFLOP/s."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    return round(_median_rate(lambda: a @ b, 2 * n ** 3 / 1e9, seconds), 1)


def python_loop_mops(n: int = 2_000_000, seconds: float = 1.0) -> float:
    """Millions of iterations per second of a plain Python loop (one core)."""
    def loop():
        total = 0
        for i in range(n):
            total += i & 7
        return total
    return round(_median_rate(loop, n / 1e6, seconds), 2)


def tf_images_per_s(variant: str = "lite1", size: int = 240, batch: int = 32,
                    seconds: float = 4.0) -> float:
    """Images/s of frozen EfficientNet-``variant`` inference at ``size`` px (ImageNet weights
    from the installed package: offline)."""
    import numpy as np

    from lookalike.console import quiet_environment

    quiet_environment()  # before TensorFlow's first import
    from lookalike.learning.backbones.efficientnet_lite import lite_features

    net = lite_features(variant, (size, size, 3), "imagenet")
    x = np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)
    return round(_median_rate(lambda: net(x, training=False), batch, seconds), 1)


def probe(tensorflow: bool = True) -> dict:
    """Everything above, with the time it was taken."""
    out = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_info(),
           "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
           "numpy_gemm_gflops": numpy_gemm_gflops(), "python_loop_mops": python_loop_mops()}
    if tensorflow:
        out["tf_lite1_240_images_per_s"] = tf_images_per_s()
        # TF_ENABLE_ONEDNN_OPTS as TensorFlow read it (lookalike.runtime.prefer_onednn; unset:
        # TensorFlow's own choice for the CPU): about 1.8 x this figure on an AVX2-only CPU.
        # Probes before 2026-12-02 17:00 did not set it.
        out["tf_onednn"] = os.environ.get(ONEDNN_ENV)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tensorflow", action="store_true",
                        help="skip the TensorFlow probe (most of its time)")
    args = parser.parse_args(argv)
    print(json.dumps({"benchmark": "machine", **probe(not args.no_tensorflow)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
