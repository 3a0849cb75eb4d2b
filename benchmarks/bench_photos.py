"""Photos benchmark: retrieval on real phone photos of clothes, three ways, on one split.

The shared clothing photos (``../shared/datasets/clothing-photos``, 1,315 photos, 17
categories) are ingested as a shop would (``ingest --source folder --metadata``, photos
profile). Queries are the test split (held-out photos; the split is a hash of each image's
content), the catalogue is the train split, all categories; Recall@k and MAP@R by category:

* ``raw_pixels_32``: flattened 32 px RGB pixels, cosine (no learning);
* ``frozen_<size>``: EfficientNet-Lite0 ImageNet features (1280-d, average-pooled), no training,
  at each ``--frozen-sizes``;
* ``finetuned``: the photo profile's Multi-Similarity model, trained by ``train_and_log`` as the
  pipeline does (warm-up with the backbone frozen, then fine-tuning), evaluated by it.

Each is scored twice: ``test`` queries (10 %, what the pipeline reports) and ``held_out``
queries (validation + test, 20 %, never trained on: half the sampling noise of 110 queries).

Also: training images/s and wall time, and the process's peak RSS. Prints one JSON object.
Example (2 CPU cores, about 20 minutes)::

    .venv/bin/python -m benchmarks.bench_photos --home /tmp/lookalike-photos
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-photos"


def _scores(settings, train, queries, embed, distance="cosine") -> dict:
    from lookalike.learning.evaluation import evaluate_embedders

    metrics = evaluate_embedders(settings, train, queries, embed, None, baseline=False,
                                 distance=distance)["metrics"]
    return {k[2:]: round(v, 4) for k, v in metrics.items() if k.startswith("a_")}


def _both(settings, train, test, held_out, embed) -> dict:
    return {**_scores(settings, train, test, embed),
            "held_out": _scores(settings, train, held_out, embed)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--home", default="/tmp/lookalike-photos")
    parser.add_argument("--profile", default="photos")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--frozen-sizes", default="160,224")
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args(argv)

    from benchmarks.common import bench_settings
    from lookalike.catalogue.ingest import ingest_folder
    from lookalike.console import quiet_libraries
    from lookalike.learning.data import load_split
    from lookalike.spark import get_spark

    settings = bench_settings(args.profile, args.home, args.set)
    quiet_libraries(settings.home_path / "logs")
    spark = get_spark(settings)
    photos = Path(args.photos)
    if not (photos / "products.csv").exists():
        raise SystemExit(f"bench_photos: no clothing photos at {photos} (../shared is not in a "
                         "user's clone; pass --photos DIR with images/ and products.csv)")
    out: dict = {"photos": str(photos), "profile": args.profile, "cores": os.cpu_count(),
                 "protocol": "test-split photos (hash of content) vs train-split catalogue, "
                             "all categories, relevant = same category"}
    summary = ingest_folder(spark, settings, str(photos), str(photos / "products.csv"))
    out["ingest"] = {k: v for k, v in summary.__dict__.items() if k != "source"}
    version = summary.table_version

    import numpy as np

    from lookalike.learning.data import SplitArrays

    def splits(size: int, channels: int = 3):
        sized = settings.replace(image={"size": size, "channels": channels})
        train, val, test = (load_split(spark, sized, s, version) for s in ("train", "val", "test"))
        held_out = SplitArrays(np.concatenate([val.x[:], test.x[:]]),  # 249 photos
                               np.concatenate([val.labels, test.labels]),
                               np.concatenate([val.product_ids, test.product_ids]))
        return sized, train, test, held_out

    sized, train, test, held_out = splits(32)
    out["n_catalogue"], out["n_queries"], out["n_held_out"] = len(train), len(test), len(held_out)
    out["raw_pixels_32"] = _both(sized, train, test, held_out, lambda x: x.reshape(len(x), -1))
    print(f"[bench] raw pixels: {out['raw_pixels_32']}", file=sys.stderr, flush=True)

    from lookalike.learning.backbones.efficientnet_lite import pretrained_lite0

    for size in (int(s) for s in args.frozen_sizes.split(",") if s):
        sized, train, test, held_out = splits(size)
        net = pretrained_lite0((size, size, 3), "imagenet")
        started = time.perf_counter()
        embed = (lambda x, net=net: net.predict(x * 255.0 / 128.0 - 127.0 / 128.0,
                                                batch_size=64, verbose=0))
        out[f"frozen_{size}"] = _both(sized, train, test, held_out, embed)
        out[f"frozen_{size}"]["embed_images_per_second"] = round(
            (2 * len(train) + len(test) + len(held_out)) / (time.perf_counter() - started), 1)
        print(f"[bench] frozen {size}: {out[f'frozen_{size}']}", file=sys.stderr, flush=True)

    if not args.skip_finetune:
        from lookalike.learning.training import train_and_log

        started = time.perf_counter()
        result = train_and_log(settings, use_tuned=False)
        out["finetuned"] = {k[2:]: round(v, 4) for k, v in result.items()
                            if k.startswith("a_") and isinstance(v, float)}
        from lookalike.learning.artifacts import resolve_model
        from lookalike.learning.model import load_embedding_model

        _, model_dir = resolve_model(settings, result["run_id"])
        model = load_embedding_model(str(model_dir))
        _, train, test, held_out = splits(settings.image.size)
        out["finetuned"]["held_out"] = _scores(settings, train, held_out,
                                               lambda x: model.embed(x, batch_size=64))
        out["finetuned"].update(
            run_id=result["run_id"], train_wall_seconds=round(time.perf_counter() - started, 1),
            images_per_second=result.get("train_images_per_second"),
            final_train_loss=result.get("final_train_loss"),
            image_size=settings.image.size, training=settings.training.__dict__)
        print(f"[bench] fine-tuned: {out['finetuned']}", file=sys.stderr, flush=True)
        # Against the best frozen figure measured (any size), not only the same size.
        frozen = max((v["recall_at_1"] for k, v in out.items() if k.startswith("frozen_")),
                     default=None)
        r1 = out["finetuned"].get("recall_at_1")
        if r1 is not None:
            out["target_recall_at_1_ge_0.70"] = r1 >= 0.70
            if frozen is not None:
                out["target_ge_frozen_plus_0.05"] = r1 >= frozen + 0.05
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
