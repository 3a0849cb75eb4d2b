"""Shop the look, measured on outfits (issue 20): per-garment Recall@1 with ``look`` on and
off, and the REST latency of a photo query with and without it.

No photo of a person in an outfit can be downloaded here, so the evaluation set is made, not
shipped: **composites of the shared clothing photos onto a real person with her mask**. The
person is Grace Hopper's public-domain portrait that matplotlib ships (waist up). The
detector finds her top region and person mask once; for each query garment photo, the photo
(cropped to the region's shape around its centre) replaces her pixels inside that region where
the mask says person, with her face, hair and the background around it. Two paints
(:data:`PAINTS`): ``photo``, the whole garment photo (the garment's own shape, with the bed,
floor or wall it lay on), and ``fabric``, its central half only (the garment in her silhouette,
its shape lost). The composite is saved as a JPEG, as a shopper's upload would be.

Why it is fair: look on and look off answer the same composite; the query photos and their
near-twins are never in the catalogue (a fifth of the near-twin components, by hash, give the
queries: their photos whose category the ``top`` garment maps to; the catalogue is every photo
outside those components, all categories); relevant = the garment photo's category. What
it cannot say: only the **top** is measured (a waist-up portrait has no legs or feet; bottom and
shoes regions are tested on synthetic landmarks only), the person is always the same one, and
neither paint is a garment worn (the photo paint keeps its background, the fabric paint loses
its shape: the same handicap for look on and off).

Conditions, each Recall@1/5/10 and MAP@R: ``garment_photo`` (the plain photo: the ceiling),
``look_off`` (the whole composite, any category), ``look_on`` (the detector's top crop on white,
searching the categories ``look.garments.top`` names, as REST does) and ``look_on_any_category``.
Vectors: frozen EfficientNet-Lite ImageNet features (``--variant``, ``--size``; the strongest
simple method of ``bench_photos_cv``), so the figure is about the crop, not one trained model.

``--rest N``: also serve a small Fashion-MNIST catalogue (N images per split, an untrained
model packaged with ``look.enabled``) and time composite queries over REST, one client, with
``look`` true and false: the detector's cost as a shopper meets it. Needs the ``[look]`` extra.

    .venv/bin/python -m benchmarks.bench_look_outfits --rest 100
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-photos"


def grace_hopper() -> bytes:
    import matplotlib

    return (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()


# The share of a garment photo's width and height, around its centre, painted on the person:
# 1.0 the whole photo (the garment's shape, with the bed, floor or wall around it), 0.5 its
# fabric only (the shared photos show a garment filling most of the frame).
PAINTS = {"photo": 1.0, "fabric": 0.5}
# Near-twins (bench_photos_cv's default): a query's twins are kept out of the catalogue.
TWIN_THRESHOLD = 0.85


def composite(person: Image.Image, box, mask: np.ndarray, garment: Image.Image,
              centre: float = 1.0) -> bytes:
    """``garment``'s central part (``centre`` of each side, then cropped to ``box``'s shape)
    painted over ``person``
    inside ``box`` where ``mask`` >= 0.5; a JPEG (quality 90)."""
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
    pixels = np.asarray(person.convert("RGB")).copy()
    inside = np.asarray(mask)[top:bottom, left:right] >= 0.5
    pixels[top:bottom, left:right][inside] = patch[inside]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def query_rows(rows: list[dict], components: np.ndarray, top_categories: set[str],
               fifth: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(queries, catalogue) masks: a fifth of the near-twin components (by a hash of their
    first product id) give the queries, their photos whose category is a top's; the catalogue
    is every photo outside those components, so no query meets its own twin there."""
    first = {}
    for row, component in zip(rows, components):
        first.setdefault(component, row["product_id"])
    chosen = {c for c, pid in first.items()
              if int(hashlib.sha256(pid.encode()).hexdigest(), 16) % 5 == fifth}
    in_chosen = np.array([c in chosen for c in components])
    tops = np.array([r["category"] in top_categories for r in rows])
    return in_chosen & tops, ~in_chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--variant", default="lite1")
    parser.add_argument("--size", type=int, default=240)
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
    from lookalike.learning.folds import twin_groups
    from lookalike.learning.metrics import retrieval_metrics
    from lookalike.look import make_detector
    from lookalike.look.regions import region_input
    from lookalike.preprocessing import checked_picture, to_model_input

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

    person = picture(grace_hopper())
    found = detector.find(person)
    top = next(r for r in found.regions if r.garment == "top")
    top_categories = set(look.garments["top"])

    rows = [r for r in csv.DictReader(open(photos / "products.csv", encoding="utf-8"))]
    labels = np.array([r["category"] for r in rows])
    data = [(photos / r["path"]).read_bytes() for r in rows]

    def network(variant: str, size: int):
        net = lite_features(variant, (size, size, 3), "imagenet")

        def embed(batch: list[np.ndarray]) -> np.ndarray:
            out = np.concatenate([np.asarray(net(np.stack(batch[i:i + 64]), training=False))
                                  for i in range(0, len(batch), 64)])
            return out / np.linalg.norm(out, axis=1, keepdims=True)
        return embed

    # Near-twins as bench_photos_cv finds them: frozen Lite0 at 224 px, cosine >= 0.85.
    twins = twin_groups(network("lite0", 224)([to_model_input(d, 224, 3) for d in data]),
                        TWIN_THRESHOLD)
    is_query, in_catalogue = query_rows(rows, twins, top_categories)
    size = args.size
    embed = network(args.variant, size)
    catalogue = embed([to_model_input(data[i], size, 3) for i in np.flatnonzero(in_catalogue)])
    catalogue_labels = labels[in_catalogue]
    query_labels = labels[is_query]
    tops = np.isin(catalogue_labels, sorted(top_categories))

    def scores(vectors, catalogue_rows=None) -> dict:
        c = catalogue if catalogue_rows is None else catalogue[catalogue_rows]
        cl = catalogue_labels if catalogue_rows is None else catalogue_labels[catalogue_rows]
        report = retrieval_metrics(vectors, query_labels, c, cl, k_values=(1, 5, 10),
                                   distance="cosine")
        return {k: round(v, 4) for k, v in report.as_flat_dict().items()}

    queries = np.flatnonzero(is_query)
    out: dict = {
        "benchmark": "look_outfits", "person": "Grace Hopper (matplotlib sample, public domain)",
        "garment": "top", "top_box": list(top.box), "queries": len(queries),
        "catalogue": int(in_catalogue.sum()), "twin_threshold": TWIN_THRESHOLD,
        "vectors": f"frozen efficientnet_{args.variant} {size} px",
        "garment_photo": scores(embed([to_model_input(data[i], size, 3) for i in queries])),
        "paints": {}}
    composites: list[bytes] = []
    for paint, centre in PAINTS.items():
        whole, crops, detect_ms, missed = [], [], [], 0
        for i in queries:
            upload = composite(person, top.box, found.mask, Image.open(io.BytesIO(data[i])),
                               centre)
            composites.append(upload)
            whole.append(to_model_input(upload, size, 3))
            started = time.perf_counter()
            seen = picture(upload)
            result = detector.find(seen)
            detect_ms.append((time.perf_counter() - started) * 1000)
            region = next((r for r in (result.regions if result else ()) if r.garment == "top"),
                          None)
            if region is None:  # no person found: REST answers the whole picture
                missed += 1
                crops.append(whole[-1])
            else:
                crops.append(region_input(seen, region, result.mask, size, 3))
        crop_vectors = embed(crops)
        out["paints"][paint] = {
            "centre": centre, "top_found": len(queries) - missed,
            "look_off": scores(embed(whole)), "look_on": scores(crop_vectors, tops),
            "look_on_any_category": scores(crop_vectors),
            "detector_p50_ms": round(float(np.median(detect_ms)), 1)}
        print(f"[bench] {paint}: {out['paints'][paint]}", file=sys.stderr, flush=True)
    if args.rest:
        out["rest"] = rest_latency(args.rest, composites[:16], args.requests)
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
