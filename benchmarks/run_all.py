"""Run every benchmark (``make benchmarks``), each in its own process, and save its JSON line.

Each entry is the command BENCHMARKS.md quotes; results go to ``benchmarks/results/<name>.json``
(written only when the benchmark exits 0, so a failed run never overwrites a good figure).
Everything stays on loopback. On 2 cores the whole set takes about two hours, most of it the
training benchmark; ``--only NAME`` (repeatable) runs a subset, ``--list`` shows the names.
First, ``benchmarks.machine`` probes how fast the host is (results/machine.json); every result
carries that probe under ``machine``.

The serving and index-on-real-embeddings benchmarks use the home the embedding benchmark
prepares (``--package``: an embedded, indexed and registered model), so the order matters.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def plan(home: str) -> list[tuple[str, list[str]]]:
    """(result name, module arguments) in run order."""
    return [
        # Issue 22: `make demo` on a fresh home until both URLs print (ports 5001, 8501).
        ("demo", ["benchmarks.bench_demo", "--home", str(Path(home) / "demo")]),
        ("ingest", ["benchmarks.bench_ingest"]),
        ("embedding", ["benchmarks.bench_embedding", "--home", home, "--package"]),
        ("serving", ["benchmarks.bench_serving", "--home", home, "--requests", "1000",
                     "--seconds", "40"]),
        ("serving_floor", ["benchmarks.bench_serving", "--home", home, "--requests", "1000",
                           "--seconds", "40", "--floor"]),
        # Issue 19: every hostile input against a served model (its own small home).
        ("hostile", ["benchmarks.bench_hostile", "--prepare", "100",
                     "--home", str(Path(home) / "hostile")]),
        ("index_synthetic_70k", ["benchmarks.bench_index", "--n", "70000", "--queries", "1000"]),
        ("index_synthetic_1m_filters", ["benchmarks.bench_index", "--n", "1000000",
                                        "--queries", "1000", "--ef-search", "64,128"]),
        # Issue 21: the simple pixel baselines every model figure is compared with.
        ("pixel_baselines", ["benchmarks.bench_pixel_baselines", "--home",
                             str(Path(home) / "pixels")]),
        ("training_quality", ["benchmarks.bench_training", "--profile", "full", "--home",
                              str(Path(home) / "training")]),
        # Issue 12: tune -> train -> evaluate for 3 seeds, the full profile shortened to fit.
        ("quality_3_seeds", ["benchmarks.bench_quality", "--profile", "full", "--home",
                             str(Path(home) / "quality"), "--seeds", "1,2,3",
                             "--set", "training.epochs=6", "--set", "training.steps_per_epoch=400",
                             "--set", "tuning.max_evals=4", "--set", "tuning.epochs=1"]),
        # Issues 21/22: the quick profile as `make demo` trains it, 3 seeds.
        ("quality_quick_3_seeds", ["benchmarks.bench_quality", "--profile", "quick", "--home",
                                   str(Path(home) / "quality_quick"), "--seeds", "1,2,3",
                                   "--set", "evaluation.generalisation=false"]),
        # ... and which vector to serve: the same weights scored as features and as head.
        ("served_vector", ["benchmarks.bench_served_vector", "--profile", "full", "--home",
                           str(Path(home) / "vectors"), "--set", "training.epochs=4",
                           "--set", "training.steps_per_epoch=300"]),
        # Issue 20: shop the look's detector on the shared clothing photos (needs the [look]
        # extra and ../shared).
        ("look", ["benchmarks.bench_look"]),
        # Issue 20: shop the look on composites of the shared photos, and its REST latency.
        ("look_outfits", ["benchmarks.bench_look_outfits", "--rest", "100"]),
        # Issue 21: the shop photos, 5-fold cross-validated (needs
        # ../shared/datasets/clothing-photos; exits with a message without it).
        # The shares of training.finetune_blend the photos profile chose from.
        ("photos_cv", ["benchmarks.bench_photos_cv", "--home", str(Path(home) / "photos_cv"),
                       "--frozen", "lite0:224,lite1:240,lite2:260",
                       "--blends", "0.5,0.6,0.7,0.8,1", "--ensembles", "0.5,0.7"]),
        # ... and its REST latency at the profile's backbone and size (target p50 <= 25 ms).
        ("photos_serving_lite1_240", ["benchmarks.bench_photo_rest", "--home",
                                      str(Path(home) / "photo_rest")]),
    ]


def last_json_line(text: str) -> dict:
    """The benchmark's result: the last stdout line (or block) that parses as a JSON object."""
    for start in range(len(text)):
        if text[start] == "{":
            try:
                value = json.loads(text[start:])
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object in the benchmark's output")


def run(name: str, module_args: list[str], machine: dict | None = None) -> dict:
    """Run one benchmark; its result, with ``machine`` (the probe of this run: how fast the
    host was, benchmarks.machine) under the key ``machine``, goes to results/<name>.json."""
    print(f"[benchmarks] {name}: python -m {' '.join(module_args)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", *module_args], stdout=subprocess.PIPE,
                          text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {name} failed with exit code {done.returncode}")
    result = last_json_line(done.stdout)
    if machine is not None:
        result.setdefault("machine", machine)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"[benchmarks] {name}: done in {seconds:.0f}s -> benchmarks/results/{name}.json",
          file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="LOOKALIKE_HOME for the benchmarks (default: a temp dir)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--list", action="store_true", help="list the benchmark names")
    args = parser.parse_args(argv)
    home = args.home or tempfile.mkdtemp(prefix="lookalike-bench-")
    steps = plan(home)
    if args.list:
        print("\n".join(name for name, _ in steps))
        return 0
    unknown = set(args.only) - {name for name, _ in steps}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; see --list")
    # The host's speed now, beside every result: timings of two runs compare only when their
    # probes agree (a VM's host can change across a restart: the top of BENCHMARKS.md).
    try:
        machine = run("machine", ["benchmarks.machine"])
    except (RuntimeError, ValueError) as error:
        print(f"[benchmarks] machine: {error}; results go without the probe", file=sys.stderr)
        machine = None
    failed = []
    for name, module_args in steps:
        if args.only and name not in args.only:
            continue
        try:
            run(name, module_args, machine)
        except (RuntimeError, ValueError) as error:
            print(f"[benchmarks] {name}: {error}", file=sys.stderr, flush=True)
            failed.append(name)
    if failed:
        print(f"[benchmarks] failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
