"""A lever's cross-validated photo figures, paired fold by fold with another run's.

Run: .venv/bin/python -m benchmarks.paired_folds LEVER.json [MORE.json ...] \
        [--against benchmarks/results/photos_cv.json]

``bench_photos_cv`` deals the photos into the same folds on every run (same photos, fold count
and seed), so a lever run on some folds (``--only-folds``, possibly split over several runs) is
compared with the reference run on those folds only: for each fine-tuned method both runs
scored, the per-fold difference's mean and standard error, and both means. It also joins the
lever's own folds (``joined``: mean ± se per method, and paired with the strongest frozen method,
which every run scores on all folds), so a lever run split over several runs gives the same
figures as one run of all folds. ``--against`` is optional: without it only ``joined`` is
printed. Runs dealt into other folds (``--naive-folds``, another seed or fold count) are refused:
their fold numbers name other photos. Prints one JSON object. Reads JSON only: no training, no
TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.bench_photos_cv import METRICS
from lookalike.learning.folds import mean_se

# What deals the photos into folds: runs that differ in any of these hold other photos under the
# same fold number, so pairing or joining them by fold would compare unlike with unlike.
# (Not the photos' path: the same folder mounted elsewhere deals the same folds.)
FOLD_KEYS = ("n_photos", "folds", "seed", "twin_threshold", "folds_keep_twins_together",
             "fold_sizes")
# Runs from before ``--naive-folds`` existed do not say; their folds always kept twins together.
FOLD_DEFAULTS = {"folds_keep_twins_together": True}


def fold_mismatch(results: dict[str, dict]) -> str | None:
    """Why these runs (by name) were dealt into different folds, or None when they were not."""
    (first, ref), *rest = results.items()
    for name, result in rest:
        for key in FOLD_KEYS:
            mine, theirs = (run.get(key, FOLD_DEFAULTS.get(key)) for run in (result, ref))
            if mine != theirs:
                return (f"{name} and {first} were dealt into different folds ({key}: "
                        f"{mine!r} against {theirs!r}); fold numbers would name different "
                        "photos")
    return None


def per_fold(result: dict) -> dict[str, dict[int, dict]]:
    """{fine-tuned method: {fold: scores}} of one ``bench_photos_cv`` result."""
    folds = result.get("finetune_folds") or []
    return {name: dict(zip(folds, method["per_fold"]))
            for name, method in result["methods"].items() if name.startswith("finetuned_")}


def joined_folds(levers: list[dict]) -> dict[str, dict[int, dict]]:
    """{fine-tuned method: {fold: scores}} over several runs of one lever (split folds)."""
    lever: dict[str, dict[int, dict]] = {}
    for result in levers:
        for name, scores in per_fold(result).items():
            lever.setdefault(name, {}).update(scores)
    return lever


def joined(levers: list[dict]) -> dict:
    """Per fine-tuned method of the lever: its folds, mean ± se, and paired with the strongest
    frozen method on the same folds (what ``bench_photos_cv`` reports for one whole run)."""
    frozen_name = levers[0]["strongest_frozen"]
    frozen = levers[0]["methods"][frozen_name]["per_fold"]      # every fold, by fold number
    out = {"strongest_frozen": frozen_name}
    for name, scores in sorted(joined_folds(levers).items()):
        folds = sorted(scores)
        out[name] = {"folds": folds, **{m: {
            "mean_se": mean_se([scores[f][m] for f in folds]),
            "paired_vs_frozen": mean_se([scores[f][m] - frozen[f][m] for f in folds])}
            for m in METRICS}}
    return out


def paired(levers: list[dict], against: dict) -> dict:
    """Per method: the folds both scored, and mean ± se of lever - reference over them."""
    lever = joined_folds(levers)
    reference = per_fold(against)
    out = {}
    for name in sorted(set(lever) & set(reference)):
        folds = sorted(set(lever[name]) & set(reference[name]))
        if not folds:
            continue
        out[name] = {"folds": folds, **{m: {
            "paired": mean_se([lever[name][f][m] - reference[name][f][m] for f in folds]),
            "lever": mean_se([lever[name][f][m] for f in folds])[0],
            "reference": mean_se([reference[name][f][m] for f in folds])[0]}
            for m in METRICS}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levers", nargs="+", help="bench_photos_cv result JSON files")
    parser.add_argument("--against", help="the reference result JSON (without it: joined only)")
    args = parser.parse_args(argv)
    load = lambda path: json.loads(Path(path).read_text(encoding="utf-8"))  # noqa: E731
    runs = {path: load(path) for path in [*args.levers, *([args.against] if args.against else [])]}
    if (why := fold_mismatch(runs)) is not None:
        raise SystemExit(why)
    levers = [runs[p] for p in args.levers]
    out: dict = {"against": args.against, "levers": args.levers}
    if args.against:
        against = runs[args.against]
        if not per_fold(against):
            raise SystemExit(f"{args.against} has no fine-tuned folds to pair with")
        out["paired"] = paired(levers, against)
    print(json.dumps({**out, "joined": joined(levers)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
