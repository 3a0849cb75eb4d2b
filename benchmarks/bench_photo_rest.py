"""Photo REST latency with the ``photos`` profile's backbone and size (issue 21: p50 <= 25 ms).

The shared clothing photos are ingested as a shop ingests them, a model of the profile's
architecture is trained for a few steps (latency does not depend on what the weights learned),
then embedded, indexed, packaged, validated and promoted as the pipeline does; then
:mod:`benchmarks.bench_serving` queries the served champion with the catalogue's own photos.
``--set SECTION.KEY=VALUE`` changes the profile (e.g. ``model.backbone=efficientnet_lite0``
with ``image.size=224``). Prints one JSON object: bench_serving's, plus the steps' seconds.

Example (about 5 minutes on 2 cores)::

    .venv/bin/python -m benchmarks.bench_photo_rest --home /tmp/lookalike-photo-rest
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.run_all import last_json_line

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-photos"
# Two epochs of a few steps: the network the profile serves, at a fraction of the training.
SHORT = ("training.epochs=2", "training.warmup_epochs=1", "training.steps_per_epoch=5")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/lookalike-photo-rest",
                        help="a LOOKALIKE_HOME it may empty first")
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--profile", default="photos")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--levels", default="1,4")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args(argv)

    photos = Path(args.photos)
    if not (photos / "products.csv").exists():
        raise SystemExit(f"bench_photo_rest: no clothing photos at {photos} (pass --photos DIR "
                         "with images/ and products.csv)")
    home = Path(args.home)
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    cli = [str(Path(sys.executable).with_name("lookalike"))]
    sets = [a for s in args.set for a in ("--set", s)]
    steps = [
        ["ingest", "--source", "folder", str(photos), "--metadata", str(photos / "products.csv")],
        ["train", "--no-tuned-params", *[a for s in SHORT for a in ("--set", s)]],
        ["embed"], ["build-index"], ["package"], ["validate", "--env-manager", "local"],
        ["promote"]]
    seconds = {}
    for step in steps:
        print(f"[bench] lookalike {step[0]}", file=sys.stderr, flush=True)
        started = time.monotonic()
        subprocess.run([*cli, *step, "--profile", args.profile, *sets], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        seconds[step[0]] = round(time.monotonic() - started, 1)
    # The champion carries its settings: the server needs no profile.
    served = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_serving", "--home", str(home), "--levels",
         args.levels, "--requests", str(args.requests), "--seconds", str(args.seconds)],
        env=env, check=True, stdout=subprocess.PIPE, text=True)
    out = last_json_line(served.stdout)
    out.update({"benchmark": "photo_rest", "profile": args.profile, "overrides": args.set,
                "step_seconds": seconds, "target": "p50 <= 25 ms at concurrency 1 (issue 21); "
                "bench_serving's own targets are Fashion-MNIST's",
                "command": "python -m benchmarks.bench_photo_rest " + " ".join(argv or sys.argv[1:])})
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
