"""Shop the look, measured on outfits (issue 20): per-garment Recall@1 (top, bottom, shoes)
with ``look`` on and off, and the REST latency of a photo query with and without it.

The evaluation set is made, not shipped: **the shared clothing photos composited onto a real
person, inside his person mask**. The person is in two full-body photos (``tests/data/people``,
from IBM's yogait repository, CC0 by its statement: see that folder's README; standing close
up, and small in a room).
The detector finds his top, bottom and shoes regions and his mask once per photo. Each outfit
takes three held-out garment photos, one per garment, and paints each over his pixels inside
its region where the mask says person (shoes first, then bottom, then top, so the top covers
the waistband and the trousers the ankles); his face, arms above the top's box and the room
stay. Two paints (:data:`PAINTS`): ``photo``, the whole garment photo cropped to the region's
shape (the garment's own shape, with the bed, floor or wall it lay on), and ``fabric``, its
central half only (the garment in his silhouette, its shape lost). The composite is saved as a
JPEG, as a shopper's upload would be.

Why it is fair: 5 folds made the way ``bench_photos_cv`` makes them (near-twins, cosine >= 0.85
of frozen Lite0 features, in one fold; stratified by category; seed 0; from ``products.csv``'s
order, so not the same assignment as that benchmark's, which reads the Delta table). Each fold's
photos of the categories ``look.garments`` maps to a garment are that fold's queries, against a
catalogue of the other folds (every category). A fold has fewer bottoms and shoes than tops, so
its outfits number its tops and reuse its bottoms and shoes in turn (each time with another
top, on a photo drawn at random). Relevant = the garment photo's category. Look on and look off
answer the same composite:

* ``look_off``: the whole composite, one list, any category; each garment is scored on it (a
  shopper without look sees one list for the whole outfit);
* ``look_on``: the detector's crop of that garment on white, among its ``look.garments``
  categories, as REST answers it: the whole picture, any category, when no person is found; no
  answer (a miss) when the person is found but not that garment (``answered_of_outfits``);
* ``look_on_any_category``: the same crop, any category (the crop's own effect);
* ``garment_photo`` / ``garment_photo_garment_categories``: each outfit's garment photographed
  alone, any category / among its garment's categories (the ceilings of the two above, weighted
  as the outfits are).

Recall@k and MAP@R count a lookalike relevant when it has the garment's category, so a garment
mapped to one category (``shoes: [Shoes]``) scores 1 with look on by construction (but for an
outfit whose person is not found, answered whole). So each look condition also has
``agreement_at_10``: the share of the garment photo's own 10 lookalikes among its garment's
categories (what the shopper would get for that garment photographed alone) that the answer
lists too; it also measures which shoes come back, not only that they are shoes.

What it cannot say: one person in one pose; neither paint is a garment worn (the photo paint
keeps its background, the fabric paint loses its shape: the same handicap for look on and off).
Vectors: frozen EfficientNet-Lite ImageNet features (``--variant``, ``--size``; the strongest
simple method of ``bench_photos_cv``), so the figure is about the crop, not one trained model.
Mean +- standard error over the folds; ``recall_at_1_by_category`` pools the folds' queries
(hits / queries per category).

``--rest N``: also serve a small Fashion-MNIST catalogue (N images per split, an untrained
model packaged with ``look.enabled``) and time outfit queries over REST (the first 16
composites, fold 0's whole-photo paint), one client, with ``look`` true and false: the
detector's and the three crops' cost as a shopper meets it.
Needs the ``[look]`` extra.

    .venv/bin/python -m benchmarks.bench_look_outfits --rest 100
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "datasets" / "clothing-photos"
PEOPLE = ROOT / "tests" / "data" / "people"
PERSONS = ("standing-close.jpg", "standing-room.jpg")
# The share of a garment photo's width and height, around its centre, painted on the person:
# 1.0 the whole photo (the garment's shape, with the bed, floor or wall around it), 0.5 its
# fabric only (the shared photos show a garment filling most of the frame).
PAINTS = {"photo": 1.0, "fabric": 0.5}
# Painted first to last: later garments cover earlier ones where their boxes overlap.
PAINT_ORDER = ("shoes", "bottom", "top")
# Near-twins and folds, made the way bench_photos_cv makes them.
TWIN_THRESHOLD, FOLDS, SEED = 0.85, 5, 0
METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "map_at_r")


def paint(pixels: np.ndarray, box, mask: np.ndarray, garment: Image.Image,
          centre: float = 1.0) -> None:
    """Paint ``garment``'s central part (``centre`` of each side, then cropped to ``box``'s
    shape) over ``pixels`` (H x W x 3, in place) inside ``box`` where ``mask`` >= 0.5."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    g = garment.convert("RGB")
    w, h = g.size
    g = g.crop((round(w * (1 - centre) / 2), round(h * (1 - centre) / 2),
                round(w * (1 + centre) / 2), round(h * (1 + centre) / 2)))
    scale = max(width / g.width, height / g.height)
    g = g.resize((max(width, round(g.width * scale)), max(height, round(g.height * scale))),
                 Image.BILINEAR)
    x0, y0 = (g.width - width) // 2, (g.height - height) // 2
    patch = np.asarray(g.crop((x0, y0, x0 + width, y0 + height)))
    inside = np.asarray(mask)[top:bottom, left:right] >= 0.5
    pixels[top:bottom, left:right][inside] = patch[inside]


def composite(person: Image.Image, mask: np.ndarray, paints) -> bytes:
    """``person`` with each ``(box, garment picture, centre)`` of ``paints`` painted in turn;
    a JPEG (quality 90)."""
    pixels = np.asarray(person.convert("RGB")).copy()
    for box, garment, centre in paints:
        paint(pixels, box, mask, garment, centre)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def outfits(queries: dict[str, np.ndarray]) -> list[dict[str, int]]:
    """One outfit per query of the most numerous garment; the other garments' queries are
    reused in turn (a garment without queries is left as the person wears it)."""
    n = max((len(q) for q in queries.values()), default=0)
    return [{g: int(q[j % len(q)]) for g, q in queries.items() if len(q)} for j in range(n)]


def summarise(per_fold: list[dict]) -> dict:
    from lookalike.learning.folds import mean_se

    return {m: mean_se([f[m] for f in per_fold]) for m in per_fold[0]}


def nearest(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest of ``rows`` (indices into ``vectors``) to each query, by cosine: the
    project's exact search (:func:`lookalike.vectors.exact_knn`)."""
    from lookalike.vectors import exact_knn, prepare

    _, found = exact_knn(prepare(queries, "cosine"), prepare(vectors[rows], "cosine"), k,
                         "cosine")
    return rows[found]


def agreement(answers: np.ndarray, reference: np.ndarray) -> float:
    """Mean share of each reference list that the answer list also holds."""
    return round(float(np.mean([len(set(a) & set(r)) / len(r)
                                for a, r in zip(answers, reference)])), 4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--variant", default="lite1")
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--folds", default="", help="only these folds (e.g. 0,1; default all)")
    parser.add_argument("--rest", type=int, default=0, metavar="N",
                        help="also time REST queries against a fresh home of N images per split")
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args(argv)

    import csv

    from lookalike.console import quiet_libraries

    # Before TensorFlow is imported: its start-up lines go to the log, not the terminal.
    quiet_libraries(Path(tempfile.gettempdir()) / "lookalike-bench-logs")
    from lookalike.config import load_settings
    from lookalike.learning.backbones.efficientnet_lite import lite_features
    from lookalike.learning.folds import stratified_group_folds, twin_groups
    from lookalike.learning.metrics import retrieval_metrics
    from lookalike.look import GARMENTS, make_detector
    from lookalike.look.regions import region_input
    from lookalike.preprocessing import checked_picture, to_model_input

    begun = time.perf_counter()
    photos = Path(args.photos)
    if not (photos / "products.csv").exists():
        raise SystemExit(f"bench_look_outfits: no clothing photos at {photos} (../shared is not "
                         "in a user's clone; pass --photos DIR with images/ and products.csv)")
    settings = load_settings("photos")
    look, serving = settings.look, settings.serving
    detector = make_detector(look.detector, look.as_limits())

    def picture(data: bytes) -> Image.Image:
        return checked_picture(data, look.max_side, serving.max_image_bytes, serving.max_pixels,
                               settings.catalogue.allowed_formats, serving.max_decode_bytes)

    missing = [name for name in PERSONS if not (PEOPLE / name).is_file()]
    if missing:
        raise SystemExit(f"bench_look_outfits: {missing} absent from {PEOPLE} (its README says "
                         "why they may be, and what to put there)")
    people = []
    for name in PERSONS:
        person = picture((PEOPLE / name).read_bytes())
        found = detector.find(person)
        boxes = {r.garment: r.box for r in (found.regions if found else ())}
        if set(boxes) != set(GARMENTS):
            raise SystemExit(f"bench_look_outfits: {name}: the detector found {sorted(boxes)}, "
                             f"not {list(GARMENTS)}")
        people.append((name, person, found.mask, boxes))

    rows = list(csv.DictReader(open(photos / "products.csv", encoding="utf-8")))
    labels = np.array([r["category"] for r in rows])
    data = [(photos / r["path"]).read_bytes() for r in rows]
    garment_of = {c: g for g in GARMENTS for c in look.garments[g]}

    def network(variant: str, size: int):
        net = lite_features(variant, (size, size, 3), "imagenet")

        def embed(batch: list[np.ndarray]) -> np.ndarray:
            out = np.concatenate([np.asarray(net(np.stack(batch[i:i + 64]), training=False))
                                  for i in range(0, len(batch), 64)])
            return out / np.linalg.norm(out, axis=1, keepdims=True)
        return embed

    # Near-twins and folds, made the way bench_photos_cv makes them: frozen Lite0 at 224 px.
    twins = twin_groups(network("lite0", 224)([to_model_input(d, 224, 3) for d in data]),
                        TWIN_THRESHOLD)
    fold = stratified_group_folds(labels, twins, FOLDS, SEED)
    size = args.size
    embed = network(args.variant, size)
    started = time.perf_counter()
    vectors = embed([to_model_input(d, size, 3) for d in data])
    embed_rate = len(data) / (time.perf_counter() - started)

    def scores(queries, query_labels, catalogue_rows) -> dict:
        report = retrieval_metrics(queries, query_labels, vectors[catalogue_rows],
                                   labels[catalogue_rows], k_values=(1, 5, 10),
                                   distance="cosine")
        # record() pools groups by their sizes: every query must have been scored.
        assert report.n_skipped == 0, f"{report.n_skipped} queries without a relevant item"
        return {m: round(v, 4) for m, v in report.as_flat_dict().items() if m in METRICS}

    chosen = [int(f) for f in args.folds.split(",") if f] or list(range(FOLDS))
    if not set(chosen) <= set(range(FOLDS)):
        raise SystemExit(f"bench_look_outfits: --folds must be among 0..{FOLDS - 1}")
    per_fold: dict = {}   # condition -> garment -> [fold scores]
    by_category: dict = {}  # condition -> garment -> category -> [Recall@1 hits, queries]
    counts = {g: {"queries": 0, "distinct_photos": 0} for g in GARMENTS}
    answered: dict = {p: {"all_three": 0, "no_person": 0, **{g: 0 for g in GARMENTS}}
                      for p in PAINTS}
    detect_ms: list[float] = []
    uploads: list[bytes] = []

    def record(condition: str, garment: str, truth: np.ndarray, groups) -> None:
        """Score one condition from ``groups`` of (outfit indices, vectors or None for no
        answer, catalogue rows searched, reference lists): Recall@k, MAP@R and agreement are
        means over queries, so the groups pool by their sizes; a garment without an answer
        scores 0 (REST gives none when it finds the person but not that garment)."""
        total, pooled = 0, {}
        tally = by_category.setdefault(condition, {}).setdefault(garment, {})
        for index, answers, rows_, reference in groups:
            if not len(index):
                continue
            if answers is None:   # no answer: a miss
                value = dict.fromkeys([*METRICS, "agreement_at_10"], 0.0)
                top1 = np.array([None] * len(index))
            else:
                value = scores(answers, truth[index], rows_)   # rows_: a boolean mask
                if reference is not None:
                    value["agreement_at_10"] = agreement(
                        nearest(answers, vectors, np.flatnonzero(rows_), 10), reference)
                top1 = labels[nearest(answers, vectors, np.flatnonzero(rows_), 1)[:, 0]]
            for m, v in value.items():
                pooled[m] = pooled.get(m, 0.0) + v * len(index)
            total += len(index)
            for category, hit in zip(truth[index], top1 == truth[index]):
                tally.setdefault(str(category), [0, 0])
                tally[str(category)][0] += int(hit)
                tally[str(category)][1] += 1
        per_fold.setdefault(condition, {}).setdefault(garment, []).append(
            {m: round(v / total, 4) for m, v in pooled.items()})

    for f in chosen:
        rng = np.random.default_rng(SEED + f)
        in_catalogue = fold != f
        queries = {g: np.flatnonzero((fold == f) & np.isin(labels, look.garments[g]))
                   for g in GARMENTS}
        outfit_rows = outfits(queries)
        worn = [g for g in GARMENTS if len(queries[g])]
        # Which photo each outfit is painted on: at random, so a reused bottom or shoe lands
        # on either (a turn-by-turn choice would tie it to one when its count is even).
        on_person = rng.integers(len(people), size=len(outfit_rows))
        everyone = np.arange(len(outfit_rows))
        for g in worn:
            counts[g]["queries"] += len(outfit_rows)
            counts[g]["distinct_photos"] += len(queries[g])
            truth = labels[[o[g] for o in outfit_rows]]
            photos_ = vectors[[o[g] for o in outfit_rows]]
            of_garment = in_catalogue & np.isin(labels, look.garments[g])
            # The ceiling, weighted as the outfits are: each garment photo alone.
            record("garment_photo", g, truth, [(everyone, photos_, in_catalogue, None)])
            record("garment_photo_garment_categories", g, truth,
                   [(everyone, photos_, of_garment, None)])
        for paint_name, centre in PAINTS.items():
            whole, crops = [], {g: {} for g in worn}
            no_person = []
            for j, outfit in enumerate(outfit_rows):
                _, person, mask, boxes = people[on_person[j]]
                upload = composite(person, mask, [
                    (boxes[g], Image.open(io.BytesIO(data[outfit[g]])), centre)
                    for g in PAINT_ORDER if g in outfit])
                if len(uploads) < 16:   # what --rest sends
                    uploads.append(upload)
                whole.append(to_model_input(upload, size, 3))
                seen = picture(upload)
                tic = time.perf_counter()
                result = detector.find(seen)
                detect_ms.append((time.perf_counter() - tic) * 1000)
                if result is None:       # REST answers the whole picture, any category
                    no_person.append(j)
                    answered[paint_name]["no_person"] += 1
                    continue
                regions = {r.garment: r for r in result.regions}
                answered[paint_name]["all_three"] += set(GARMENTS) <= set(regions)
                for g in worn:
                    if g in regions:     # else REST has no answer for g
                        answered[paint_name][g] += 1
                        crops[g][j] = region_input(seen, regions[g], result.mask, size, 3)
            whole_vectors = embed(whole)
            no_person = np.array(no_person, dtype=int)
            for g in worn:
                truth = labels[[o[g] for o in outfit_rows]]
                of_garment = in_catalogue & np.isin(labels, look.garments[g])
                reference = nearest(vectors[[o[g] for o in outfit_rows]], vectors,
                                    np.flatnonzero(of_garment), 10)
                cropped = np.array(sorted(crops[g]), dtype=int)
                unanswered = np.setdiff1d(everyone, np.concatenate([cropped, no_person]))
                crop_vectors = (embed([crops[g][j] for j in cropped]) if len(cropped)
                                else np.zeros((0, whole_vectors.shape[1])))
                fallback = (no_person, whole_vectors[no_person], in_catalogue,
                            reference[no_person])
                missing = (unanswered, None, None, None)
                record(f"{paint_name}/look_off", g, truth,
                       [(everyone, whole_vectors, in_catalogue, reference)])
                record(f"{paint_name}/look_on", g, truth,
                       [(cropped, crop_vectors, of_garment, reference[cropped]), fallback,
                        missing])
                record(f"{paint_name}/look_on_any_category", g, truth,
                       [(cropped, crop_vectors, in_catalogue, reference[cropped]), fallback,
                        missing])
            print(f"[bench] fold {f} {paint_name}: "
                  + " ".join(f"{g} on {per_fold[f'{paint_name}/look_on'][g][-1]['recall_at_1']}"
                             f" off {per_fold[f'{paint_name}/look_off'][g][-1]['recall_at_1']}"
                             for g in worn), file=sys.stderr, flush=True)

    out: dict = {
        "benchmark": "look_outfits",
        "persons": {name: {g: list(b) for g, b in boxes.items()}
                    for name, _, _, boxes in people},
        "person_source": "tests/data/people (IBM/yogait; CC0 by its statement, see README)",
        "folds": chosen, "of_folds": FOLDS, "seed": SEED, "twin_threshold": TWIN_THRESHOLD,
        "garment_categories": {g: list(look.garments[g]) for g in GARMENTS},
        "unmapped_categories": sorted(set(labels.tolist()) - set(garment_of)),
        "catalogue_photos": len(rows), "queries": counts,
        "vectors": f"frozen efficientnet_{args.variant} {size} px",
        "embed_images_per_second": round(embed_rate, 1),
        "detector_p50_ms": round(float(np.median(detect_ms)), 1),
        "answered_of_outfits": {p: {**c, "outfits": counts[GARMENTS[0]]["queries"]}
                                for p, c in answered.items()},
        "recall_at_1_by_category": {
            condition: {g: {c: f"{hits}/{n}" for c, (hits, n) in sorted(tally.items())}
                        for g, tally in by_garment.items()}
            for condition, by_garment in by_category.items()},
        "per_fold": per_fold,
        "summary": {condition: {g: summarise(v) for g, v in by_garment.items()}
                    for condition, by_garment in per_fold.items()},
        "command": "python -m benchmarks.bench_look_outfits " + " ".join(
            argv if argv is not None else sys.argv[1:])}
    out["wall_seconds_before_rest"] = round(time.perf_counter() - begun, 1)
    for condition, by_garment in out["summary"].items():
        print(f"[bench] {condition}: " + "  ".join(
            f"{g} R@1 {s['recall_at_1'][0]}+-{s['recall_at_1'][1]}"
            + (f" agree@10 {s['agreement_at_10'][0]}" if "agreement_at_10" in s else "")
            for g, s in by_garment.items()),
            file=sys.stderr, flush=True)
    if args.rest:
        out["rest"] = rest_latency(args.rest, uploads[:16], args.requests)
    print(json.dumps(out))
    return 0


def rest_latency(per_split: int, uploads: list[bytes], requests: int) -> dict:
    """p50/p99 of one-photo queries over REST, one client, look true and false."""
    os.environ["LOOKALIKE__LOOK__ENABLED"] = "true"   # packaged into the model
    from benchmarks.bench_embedding import prepare
    from benchmarks.bench_serving import run_level
    from lookalike.config import load_settings
    from lookalike.serving.server import post_json, start_server, stop_server

    home = prepare(None, per_split, None, package=True)["home"]
    settings = load_settings(overrides={"home": home})
    images = [base64.b64encode(u).decode("ascii") for u in uploads]
    process, url = start_server(settings)
    try:
        out = {"home": home, "photo_bytes_median": int(np.median([len(u) for u in uploads]))}
        for flag in (False, True):
            bodies = [json.dumps({"dataframe_records": [{"image": i}],
                                  "params": {"k": 10, "look": flag}}).encode() for i in images]
            status, body = post_json(f"{url}/invocations", json.loads(bodies[0]))
            assert status == 200, (status, body)
            run_level(url, bodies, 1, 10, 30)                     # warm-up
            out[f"look_{str(flag).lower()}"] = run_level(url, bodies, 1, requests, 120)
        out["garments_answered"] = sorted({r.get("garment") for r in body["predictions"]})
    finally:
        stop_server(process)
    return out


if __name__ == "__main__":
    sys.exit(main())
