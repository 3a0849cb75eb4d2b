"""Photos, cross-validated: what a shop can trust on a small catalogue (issue 21).

The shared clothing photos (``../shared/datasets/clothing-photos``, 1,315 photos, 17
categories) are ingested as a shop would (``ingest --source folder --metadata``), then split
into ``--folds`` folds that are:

* **group-aware** (:mod:`lookalike.learning.folds`): photos of one product (``group_id``) and
  **near-twins** stay in one fold. A
  near-twin is a photo whose frozen EfficientNet-Lite0 (224 px) features have cosine
  >= ``--twin-threshold`` with another's (same shoot, same bed or wall); twins are linked
  transitively (union-find). ``naive_folds`` scores the strongest frozen method on folds that
  ignore twins, to show what leaking them would add; ``--naive-folds`` runs everything,
  fine-tuning included, on those folds instead (the same figure for the fine-tuned model);
* **stratified** by category (each group's categories dealt round-robin over the folds), seeded.

Each fold's photos are the queries; the other folds are the catalogue, and for the fine-tuned
model also its training set. Relevant = same category. Methods:

* ``centred_pixels_32``: flattened 32 px RGB, centred on the catalogue's mean, cosine;
* ``frozen_<variant>_<size>``: EfficientNet-Lite0/1/2 ImageNet features (1280-d, pooled), no
  training (``--frozen``: ``variant:size`` pairs); ``..._flip``: the mean of the image's and
  its mirror image's vectors (flip test-time augmentation);
* ``finetuned_<head|features>[_flip]``: the ``--profile`` recipe (its defaults: untuned, as
  ``lookalike train --no-tuned-params``) trained on the other folds, both vectors of one model;
  with ``--tuned``, as ``lookalike pipeline`` would ship it with ``tuning.enabled``: the tune
  step first searches the parameters on the other folds' photos alone (a ninth of them, dealt
  as the folds are, scores the trials: :func:`inner_split`), then the recipe trains with the
  best (``tuning``: each fold's search);
  ``finetuned_features_blend<share>`` (``--blends``): the same training saved at another
  ``training.finetune_blend`` (WiSE-FT: pretrained + share x (trained - pretrained));
  ``finetuned_ensemble_w<w>`` (``--ensembles``): an output-space ensemble, the fine-tuned
  features (the profile's share) concatenated with the frozen features of the same backbone
  and size, weighted so that cosine = w x fine-tuned cosine + (1 - w) x frozen cosine (serving
  it would run two backbones);
* ``..._centred`` (frozen methods and the fine-tuned features): every vector minus the fold
  catalogue's mean, as the pixel baseline is: a transform an index could apply at no cost;
* ``..._dba<n>_qe<n>_a<alpha>`` (``--expansions``): the strongest frozen method and the
  fine-tuned features with the catalogue's vectors database-side augmented (DBA: each plus its
  n nearest catalogue vectors, weighted by cosine^alpha) and each query expanded with its n
  nearest of that catalogue (alpha-QE): the classic re-ranking of instance retrieval, free at
  query time but for a second search;
* ``..._cap<n>`` (``--category-caps``) and ``..._vote<n>_t<T>_w<w>_p<p>``
  (``--category-votes``): the strongest frozen method and the fine-tuned features with each
  list ordered by the catalogue's categories: at most n of one category in the list of ten (a
  hedge between look-alike categories), or every cosine plus w x the share its category gets
  of the n nearest's vote.

``precision_at_10`` (the strongest frozen method, the fine-tuned features, each list rule): the
share of each list of ten that is of the query's category, which Recall@10 does not see.

Reported: mean +- standard error over folds of Recall@1/5/10 and MAP@R, and for each
fine-tuned variant the paired per-fold difference to the strongest frozen method (the
strongest simple baseline, chosen by its own cross-validated Recall@1); ``per_category``: each
category's figures pooled over the folds (the fine-tuned ones, when fine-tuning ran: ``folds``),
for the strongest frozen method and the fine-tuned features, weakest Recall@10 first. A
fine-tuned fold's vectors are saved beside its checkpoints: a rerun re-scores them without
embedding again (a new ``--blends`` share costs one embedding of the photos). Choices (which
frozen method, which vector, flip or not) are made on these cross-validated means, never on a
test split. Example (2 cores, about 70 minutes;
``--skip-finetune``: about 12)::

    .venv/bin/python -m benchmarks.bench_photos_cv --home /tmp/lookalike-photos-cv
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from lookalike.learning.folds import mean_se, stratified_group_folds, twin_groups
from lookalike.vectors import l2_normalise

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-photos"
METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "map_at_r")


def summarise(per_fold: list[dict]) -> dict:
    return {m: mean_se([f[m] for f in per_fold]) for m in METRICS}


# ----------------------------------------------------------------------------- scoring


def fold_split(vectors: np.ndarray, fold: np.ndarray, f: int, transform=None):
    """(queries, catalogue) of fold ``f``: its photos, and the other folds' (``transform``
    applied to both, the catalogue's statistics only)."""
    queries, catalogue = vectors[fold == f], vectors[fold != f]
    if transform is None:
        return queries, catalogue
    return transform(queries, catalogue), transform(catalogue, catalogue)


def fold_report(vectors: np.ndarray, labels: np.ndarray, fold: np.ndarray, f: int,
                transform=None, rule=None):
    """Fold ``f``'s photos as queries against the other folds' catalogue: the full
    :class:`~lookalike.learning.metrics.RetrievalReport` (its ``per_class`` table too);
    ``rule``: a list rule (:func:`category_cap`, :func:`category_vote`) that orders each list
    with the catalogue's categories."""
    from lookalike.learning.metrics import retrieval_metrics

    queries, catalogue = fold_split(vectors, fold, f, transform)
    c = labels[fold != f]
    return retrieval_metrics(queries, labels[fold == f], catalogue, c, k_values=(1, 5, 10),
                             distance="cosine", knn_func=None if rule is None else rule(c))


def precision_at_10(vectors: np.ndarray, labels: np.ndarray, fold: np.ndarray, f: int,
                    transform=None, rule=None) -> float:
    """The share of each list of ten that is of the query's category, averaged: what Recall@10
    does not see (a list that spends places on other categories can raise Recall@10 and
    still show fewer lookalikes)."""
    from lookalike.learning.metrics import exact_knn_func, label_codes, relevance
    from lookalike.vectors import prepare

    queries, catalogue = fold_split(vectors, fold, f, transform)
    _, q_codes, c_codes = label_codes(labels[fold == f], labels[fold != f])
    knn = exact_knn_func() if rule is None else rule(labels[fold != f])
    top = knn(prepare(queries, "cosine"), prepare(catalogue, "cosine"), 10, "cosine")
    return round(float(relevance(top, q_codes, c_codes).mean()), 4)


def _cosine_only(distance: str) -> None:
    if distance != "cosine":
        raise ValueError(f"list rules order by cosine, not {distance!r}")


def category_cap(cap: int, head: int = 10):
    """A list rule: at most ``cap`` items of one category among the first ``head`` (the next
    nearest of another category takes the place); the rest in distance order. Hedges a list
    between look-alike categories."""
    from lookalike.learning.metrics import label_codes

    def rule(catalogue_labels):
        codes = label_codes([], catalogue_labels)[2]

        def knn(queries, catalogue, k, distance):
            _cosine_only(distance)
            order = np.argsort(-(queries @ catalogue.T), axis=1, kind="stable")
            out = np.empty((len(queries), min(k, catalogue.shape[0])), dtype=np.int64)
            for i, row in enumerate(order):
                taken, count = [], {}
                for j in row:
                    if count.get(codes[j], 0) < cap:
                        taken.append(j)
                        count[codes[j]] = count.get(codes[j], 0) + 1
                        if len(taken) == head:
                            break
                rest = row[~np.isin(row, taken)]
                out[i] = np.concatenate([taken, rest])[:out.shape[1]]
            return out
        return knn
    return rule


def vote_shares(similarity: np.ndarray, codes: np.ndarray, neighbours: int, temperature: float,
                prior_power: float) -> np.ndarray:
    """(queries, categories): each category's share of the vote of each query's
    ``neighbours`` nearest, a vote weighing exp(cosine / ``temperature``) (computed stably),
    each category's total divided by its catalogue count to the ``prior_power``."""
    near = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours]
    nearest = np.take_along_axis(similarity, near, 1).astype(np.float64)
    votes = np.zeros((len(similarity), int(codes.max()) + 1))
    np.add.at(votes, (np.arange(len(similarity))[:, None], codes[near]),
              np.exp((nearest - nearest[:, :1]) / temperature))
    votes /= np.bincount(codes, minlength=votes.shape[1]).clip(min=1) ** prior_power
    return votes / votes.sum(axis=1, keepdims=True)


def category_vote(neighbours: int, temperature: float, weight: float, prior_power: float):
    """A list rule: every item's cosine plus ``weight`` x its category's share of the query's
    ``neighbours`` nearest's vote (:func:`vote_shares`): lists kept to the likely category."""
    from lookalike.learning.metrics import label_codes

    def rule(catalogue_labels):
        codes = label_codes([], catalogue_labels)[2]

        def knn(queries, catalogue, k, distance):
            _cosine_only(distance)
            similarity = queries @ catalogue.T
            share = vote_shares(similarity, codes, neighbours, temperature, prior_power)
            score = similarity + weight * share[:, codes]
            return np.argsort(-score, axis=1, kind="stable")[:, :k]
        return knn
    return rule


def list_rules(caps: str, votes: str) -> dict:
    """``--category-caps`` / ``--category-votes`` as named list rules."""
    rules = {f"cap{int(c)}": category_cap(int(c)) for c in caps.split(",") if c}
    for spec in (v for v in votes.split(",") if v):
        n, t, w, p = spec.split(":")
        rules[f"vote{int(n)}_t{float(t):g}_w{float(w):g}_p{float(p):g}"] = category_vote(
            int(n), float(t), float(w), float(p))
    return rules


def scores_of(report) -> dict:
    return {m: round(v, 4) for m, v in report.as_flat_dict().items() if m in METRICS}


def fold_score(vectors: np.ndarray, labels: np.ndarray, fold: np.ndarray, f: int,
               transform=None, rule=None) -> dict:
    return scores_of(fold_report(vectors, labels, fold, f, transform, rule))


def per_category(tables: list) -> dict:
    """Each category's figures pooled over folds (every query counts once: the folds' per-class
    means weighted by their queries), weakest Recall@10 first: where a list of ten misses."""
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    out = {}
    for name, rows in table.groupby("class"):
        n = rows["n_queries"].to_numpy()
        out[str(name)] = {"n_queries": int(n.sum()),
                          **{m: round(float(np.dot(rows[m].to_numpy(), n) / n.sum()), 4)
                             for m in METRICS}}
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["recall_at_10"], kv[1]["recall_at_1"])))


def smoothed(x: np.ndarray, base: np.ndarray, n: int, alpha: float, x_in_base: bool
             ) -> np.ndarray:
    """Each row of ``x`` plus its ``n`` nearest rows of ``base`` weighted by cosine^alpha,
    normalised (alpha-QE / DBA, Radenovic et al., TPAMI 2019); ``x_in_base``: skip the row
    itself, its nearest."""
    from lookalike.vectors import exact_knn

    if n <= 0:
        return x
    d, i = exact_knn(x, base, n + int(x_in_base), "cosine")
    d, i = (d[:, 1:], i[:, 1:]) if x_in_base else (d, i)
    weights = np.clip(1.0 - d, 0.0, None) ** alpha
    return l2_normalise(x + np.einsum("qn,qnd->qd", weights, base[i]))


def expansion(dba: int, qe: int, alpha: float):
    """A fold transform: the catalogue database-side augmented (DBA, ``dba`` neighbours), then
    each query expanded with its ``qe`` nearest of that catalogue (alpha-QE)."""
    def transform(x, catalogue):
        augmented = smoothed(catalogue, catalogue, dba, alpha, True)
        return augmented if x is catalogue else smoothed(x, augmented, qe, alpha, False)
    return transform


def centred(x: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """``x`` minus the fold catalogue's mean vector (the centred pixel baseline's transform),
    unit length again: the direction every photo shares stops counting towards every cosine."""
    from lookalike.learning.evaluation import PIXEL_BASELINES

    return l2_normalise(PIXEL_BASELINES["centred_pixels"](x, catalogue))


def chained(first, second):
    """A fold transform: ``first``, then ``second`` on its output (queries and catalogue)."""
    if first is None or second is None:
        return first or second

    def transform(x, catalogue):
        moved = first(catalogue, catalogue)
        return second(moved, moved) if x is catalogue else second(first(x, catalogue), moved)
    return transform


def fold_scores(vectors: np.ndarray, labels: np.ndarray, fold: np.ndarray, k: int,
                transform=None, rule=None) -> list[dict]:
    return [fold_score(vectors, labels, fold, f, transform, rule) for f in range(k)]


def embed_all(embed, images, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, vectors of the mirror images) of every image, a batch at a time."""
    plain, mirrored = [], []
    for start in range(0, len(images), batch):
        x = np.asarray(images[start:start + batch])
        plain.append(np.asarray(embed(x)))
        mirrored.append(np.asarray(embed(x[:, :, ::-1, :].copy())))
    return l2_normalise(np.concatenate(plain)), l2_normalise(np.concatenate(mirrored))


def frozen_vectors(images, variant: str, size: int, cache: Path
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Frozen ImageNet features (and of the mirror images), cached under ``cache`` (a folder
    per catalogue: see main); and images/s."""
    from lookalike.learning.backbones.efficientnet_lite import lite_features

    path = cache / f"frozen_{variant}_{size}.npz"
    if path.exists():
        saved = np.load(path)
        return saved["plain"], saved["mirrored"], float(saved["rate"])
    net = lite_features(variant, (size, size, 3), "imagenet")
    started = time.perf_counter()
    plain, mirrored = embed_all(lambda x: net(x, training=False), images.at_size(size))
    rate = 2 * len(plain) / (time.perf_counter() - started)
    cache.mkdir(parents=True, exist_ok=True)
    save_whole(path, plain=plain, mirrored=mirrored, rate=rate)
    return plain, mirrored, rate


def write_fold_split(all_split, rows: np.ndarray, directory: Path) -> None:
    """A training split of ``rows`` laid out as :func:`lookalike.learning.data.load_split`
    caches one, so the one training loop reads it unchanged."""
    from pyspark.sql import Row

    from lookalike.learning.encoded import write_encoded

    if (directory / "done").exists():
        return
    source = all_split.x
    columns = write_encoded(directory, (Row(product_id=str(all_split.product_ids[i]),
                                            category=str(all_split.labels[i]),
                                            image=source.encoded(int(i))) for i in rows),
                            order_key="product_id")
    np.save(directory / "labels.npy", columns["category"])
    np.save(directory / "product_ids.npy", columns["product_id"])
    (directory / "done").write_text("ok")


def fold_spec(settings, categories: tuple[str, ...], n_rows: int, directory: Path):
    """The training spec of a split :func:`write_fold_split` wrote: every category trained."""
    from lookalike.learning.data import DataSpec

    size = settings.image.size
    return DataSpec(mode="memory", categories=categories,
                    train_label_ids=tuple(range(len(categories))), products_table="cv",
                    products_version=0, num_rows=n_rows, image_shape=(size, size, 3),
                    arrays_dir=str(directory), label_column="category")


def inner_split(rows: np.ndarray, labels: np.ndarray, components: np.ndarray, seed: int,
                parts: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """A fold's training ``rows`` split for tuning in the pipeline's proportions (train 0.8,
    val 0.1: val is a ninth of what is not test), but dealt as the folds are: whole
    ``components`` (products, and near-twins unless the folds ignore them), every category
    spread. The pipeline's own split hashes each product: on these photos its val queries could
    meet their near-twins in a trial's catalogue, so this is its tune step at its fairest.
    (train rows, val rows)."""
    inner = stratified_group_folds(labels[rows], components[rows], parts, seed)
    return rows[inner != 0], rows[inner == 0]


def tune_fold(settings, all_split, train_rows: np.ndarray, val_rows: np.ndarray,
              categories: tuple[str, ...], work: Path, spark) -> dict:
    """The pipeline's tune step (:func:`lookalike.learning.tuning.search`: the profile's trials,
    search space and objective) on a fold's inner split; its summary is saved in ``work`` (keyed
    by :func:`search_key`), so a rerun reuses it. Returns the search's parent run, best
    validation MAP@R and parameters, its seconds, and the parameters training applies
    (``trained_params``, recomputed from the settings of the run that reads it)."""
    from lookalike.learning.params import trained_params
    from lookalike.learning.tuning import search, tuning_plan

    saved = work / "tuned.json"
    if saved.exists():
        out = json.loads(saved.read_text())
        return {**out, "trained_params": trained_params(settings, out["best_params"]),
                "tuned_by_an_earlier_run": True}
    write_fold_split(all_split, train_rows, work / "train")
    write_fold_split(all_split, val_rows, work / "val")
    plan = tuning_plan(settings, categories)
    if plan.train != categories:
        raise SystemExit("bench_photos_cv --tuned: the profile holds categories out of tuning "
                         f"({sorted(set(categories) - set(plan.train))}); folds train on all")
    spec = fold_spec(settings, categories, len(train_rows), work / "train")
    started = time.perf_counter()
    result = search(settings, spec, str(work / "val"), plan, spark,
                    tags={"lookalike.bench": "photos_cv"}, kind="bench_tune")
    out = {"seconds": round(time.perf_counter() - started, 1), "run_id": result["run_id"],
           "train_photos": len(train_rows), "val_photos": len(val_rows),
           "val_categories": len(set(all_split.labels[val_rows].tolist())),
           "best_val_map_at_r": round(result["best_val_map_at_r"], 4),
           "trials": result["trials"], "parallelism": result["parallelism"],
           "best_params": result["best_params"]}
    saved.write_text(json.dumps(out, indent=2, sort_keys=True))
    return {**out, "trained_params": trained_params(settings, out["best_params"])}


def search_key(settings) -> str:
    """What a fold's search depends on beyond the recipe: the tuning settings and the search
    space (a rerun with more trials or another space searches again). Not ``tuning.enabled``:
    ``--tuned`` searches what the pipeline would search with it on."""
    from lookalike.config import load_search_space

    tuning = dataclasses.asdict(settings.tuning)
    tuning.pop("enabled")
    keyed = {"tuning": tuning, "space": load_search_space(settings)}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()
                          ).hexdigest()[:8]


def recipe_key(settings) -> str:
    """What a fold's checkpoints depend on: the recipe without ``training.finetune_blend``
    (checkpoints hold the unblended training; every share is made from them)."""
    keyed = json.loads(json.dumps({"image": dataclasses.asdict(settings.image),
                                   "model": dataclasses.asdict(settings.model),
                                   "training": dataclasses.asdict(settings.training)},
                                  default=str))
    keyed["training"].pop("finetune_blend")
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def finetune_fold(settings, all_split, rows: np.ndarray, categories: tuple[str, ...],
                  work: Path, blends: tuple[float, ...] = ()) -> tuple[dict, dict]:
    """Train the profile's recipe on ``rows``. Returns the vectors of every photo, by name:
    ``head``/``features`` (and ``..._mirror``, of the mirror images) of the model as the
    profile saves it (``training.finetune_blend`` applied), ``features_blend<share>`` for
    each other share in ``blends`` (the same training, another point between pretrained and
    trained weights: no retraining); and timings. The vectors are saved in ``work``, so a
    rerun with the same shares re-scores them (new scorings cost no embedding) and reports the
    timings of the run that made them; a rerun with more shares embeds only the new ones
    (:func:`earlier_vectors`). They do not know the code that made them: after a change to
    embedding or preprocessing, delete ``work/vectors-*.npz`` (the checkpoints stay)."""
    share = settings.training.finetune_blend
    saved = vectors_file(work, share, blends)
    if saved.exists():
        return load_vectors(saved)
    wanted = sorted(set(blends) - {share})
    vectors, timing = earlier_vectors(work, share, wanted)
    missing = [b for b in wanted if f"features_blend{b:g}" not in vectors]
    if vectors and not missing:
        return vectors, timing

    import tensorflow as tf

    from lookalike.learning.distributed import _built_model, train_embedding
    from lookalike.learning.model import backbone_of, blended_weights, embedding_network

    write_fold_split(all_split, rows, work / "train")
    spec = fold_spec(settings, categories, len(rows), work / "train")
    # Trained unblended, so every share comes from one training (and one checkpoint folder).
    unblended = settings.replace(training={"finetune_blend": 1.0})
    started = time.perf_counter()
    result = train_embedding(dataclasses.asdict(unblended), spec.to_dict(), str(work / "ckpt"),
                             threads=os.cpu_count(), keep_model=True)
    train_seconds = time.perf_counter() - started
    if result["images"]:  # trained again (checkpoints gone): no vector of another training
        vectors, timing, missing = {}, {}, wanted
    model = result["model"]
    backbone = backbone_of(model)
    trained = backbone.get_weights()
    pretrained = (backbone_of(_built_model(settings, spec)).get_weights()
                  if settings.model.pretrained_weights else trained)
    # Both vectors of one model, unflipped (the mirror images are embedded below).
    head = embedding_network(model, settings.replace(
        model={"embedding_from": "head", "test_time_flip": False}))
    features = embedding_network(model, settings.replace(
        model={"embedding_from": "features", "test_time_flip": False}))
    both = tf.keras.Model(model.inputs, [head.outputs[0], features.outputs[0]])
    images = all_split.x.at_size(settings.image.size)
    if not vectors:  # nothing saved for this share: the served model's vectors first
        backbone.set_weights(blended_weights(pretrained, trained, share))
        started = time.perf_counter()
        h, f = [], []
        for start in range(0, len(images), 64):
            x = np.asarray(images[start:start + 64])
            for batch in (x, x[:, :, ::-1, :].copy()):
                out = both(batch, training=False)
                h.append(np.asarray(out[0]))
                f.append(np.asarray(out[1]))
        embed_seconds = time.perf_counter() - started
        # Batches alternate plain / mirrored.
        vectors = {"head": l2_normalise(np.concatenate(h[0::2])),
                   "head_mirror": l2_normalise(np.concatenate(h[1::2])),
                   "features": l2_normalise(np.concatenate(f[0::2])),
                   "features_mirror": l2_normalise(np.concatenate(f[1::2]))}
        timing = {"train_seconds": round(train_seconds, 1),
                  "train_images_per_second":
                      round(result["images"] / max(result["seconds"], 1e-9), 1),
                  "embed_images_per_second": round(2 * len(images) / embed_seconds, 1),
                  "final_loss": round(float(result["history"].get("loss", [np.nan])[-1]), 4),
                  # A rerun whose checkpoints were complete trains nothing: its timings say so.
                  "trained_in_this_run": bool(result["images"])}
        if not result["images"]:
            timing["final_loss"] = None
    for other in missing:
        backbone.set_weights(blended_weights(pretrained, trained, other))
        vectors[f"features_blend{other:g}"] = l2_normalise(np.concatenate(
            [np.asarray(features(np.asarray(images[i:i + 64]), training=False))
             for i in range(0, len(images), 64)]))
    tf.keras.backend.clear_session()
    # Saved with the timings of the run that trained and embedded the served model.
    reused = timing.pop("vectors_saved_by_an_earlier_run", False)
    if reused:
        timing["shares_embedded_later"] = sorted(set(timing.get("shares_embedded_later", []))
                                                 | set(missing))
    save_vectors(saved, vectors, timing)
    return vectors, {**timing, "vectors_saved_by_an_earlier_run": True} if reused else timing


def vectors_file(work: Path, share: float, blends: tuple[float, ...]) -> Path:
    """Where a fold's vectors are saved: named by the served share (``features``) and the
    other shares scored, which the folder's recipe key leaves out on purpose."""
    others = "-".join(f"{b:g}" for b in sorted(set(blends) - {share}))
    return work / f"vectors-served{share:g}-blends{others or '-none'}.npz"


def earlier_vectors(work: Path, share: float, wanted: list[float]) -> tuple[dict, dict]:
    """The vectors an earlier run saved for the served ``share`` (the file holding the most of
    the ``wanted`` other shares), cut to the served model's vectors and the wanted shares, with
    that run's timings; ``({}, {})`` when there is none. A run that adds a share then embeds
    only that share."""
    best: tuple[int, Path] | None = None
    for path in sorted(work.glob(f"vectors-served{share:g}-blends*.npz")):
        with np.load(path) as stored:
            held = sum(f"features_blend{b:g}" in stored.files for b in wanted)
        if best is None or held > best[0]:
            best = (held, path)
    if best is None:
        return {}, {}
    vectors, timing = load_vectors(best[1])
    keep = {"head", "head_mirror", "features", "features_mirror"}
    keep |= {f"features_blend{b:g}" for b in wanted}
    return {name: v for name, v in vectors.items() if name in keep}, timing


def save_whole(path: Path, **arrays) -> None:
    """An ``.npz`` written whole or not at all (renamed into place: an interrupted run leaves
    no cache file to be trusted)."""
    partial = path.with_suffix(f".partial{os.getpid()}")  # two runs on one cache: no clash
    with partial.open("wb") as handle:
        np.savez(handle, **arrays)
    partial.rename(path)


def save_vectors(path: Path, vectors: dict, timing: dict) -> None:
    """A fold's vectors and the timings of the run that made them (:func:`save_whole`)."""
    save_whole(path, timing=json.dumps(timing), **vectors)


def load_vectors(path: Path) -> tuple[dict, dict]:
    with np.load(path) as stored:
        vectors = {name: stored[name] for name in stored.files if name != "timing"}
        timing = json.loads(str(stored["timing"]))
    return vectors, {**timing, "vectors_saved_by_an_earlier_run": True}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--home", default="/tmp/lookalike-photos-cv")
    parser.add_argument("--profile", default="photos")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--twin-threshold", type=float, default=0.85)
    parser.add_argument("--naive-folds", action="store_true",
                        help="folds that ignore near-twins, for every method (what leaking "
                             "them adds; compare with a run without this option)")
    parser.add_argument("--frozen", default="lite0:160,lite0:224,lite1:240,lite2:260",
                        help="variant:size pairs of frozen ImageNet features to score")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--tuned", action="store_true",
                        help="fine-tune each fold with the parameters the pipeline's tune step "
                             "picks on that fold's training photos (a ninth of them, dealt as "
                             "the folds are, scores the trials): what `lookalike pipeline` "
                             "ships with tuning.enabled")
    parser.add_argument("--only-folds", default="", help="fine-tune only these folds (e.g. 0,1)")
    parser.add_argument("--blends", default="",
                        help="also score these training.finetune_blend shares (e.g. 0.5,0.7,1) "
                             "from each fold's one training")
    parser.add_argument("--ensembles", default="",
                        help="also score output-space ensembles of the fine-tuned and the frozen "
                             "features at these weights of the fine-tuned cosine (e.g. 0.5,0.7)")
    parser.add_argument("--expansions", default="",
                        help="also score query expansion and database-side augmentation of the "
                             "strongest frozen method and the fine-tuned features, as "
                             "DBA:QE:ALPHA neighbours and weight exponent (e.g. 0:2:3,5:5:3)")
    parser.add_argument("--category-caps", default="",
                        help="also score the strongest frozen method and the fine-tuned features "
                             "with at most N items of one category in each list of ten (e.g. "
                             "9,8)")
    parser.add_argument("--category-votes", default="",
                        help="also score them with each list moved towards the category its "
                             "nearest vote for, as NEIGHBOURS:TEMPERATURE:WEIGHT:PRIOR_POWER "
                             "(e.g. 10:0.1:0.1:0.5)")
    args = parser.parse_args(argv)
    if args.tuned and args.skip_finetune:
        parser.error("--tuned tunes the fine-tuning: it cannot go with --skip-finetune")
    rules = list_rules(args.category_caps, args.category_votes)
    expansions = [tuple(float(v) for v in e.split(":")) for e in args.expansions.split(",") if e]

    from benchmarks.common import bench_settings
    from lookalike.catalogue.ingest import ingest_folder
    from lookalike.console import quiet_libraries
    from lookalike.learning.data import load_split
    from lookalike.learning.evaluation import PIXEL_BASELINES, baseline_vectors
    from lookalike.learning.params import apply_params
    from lookalike.spark import get_spark

    settings = bench_settings(args.profile, args.home, args.set)
    quiet_libraries(settings.home_path / "logs")
    photos = Path(args.photos)
    if not (photos / "products.csv").exists():
        raise SystemExit(f"bench_photos_cv: no clothing photos at {photos} (../shared is not in "
                         "a user's clone; pass --photos DIR with images/ and products.csv)")
    spark = get_spark(settings)
    summary = ingest_folder(spark, settings, str(photos), str(photos / "products.csv"))
    everything = load_split(spark, settings, "all", summary.table_version)
    labels = everything.labels
    categories = tuple(sorted(set(labels.tolist())))
    # Cached vectors belong to these rows of this table version, in this order.
    catalogue_key = hashlib.sha256(json.dumps(
        [int(summary.table_version), everything.product_ids.tolist()]).encode()).hexdigest()[:12]
    cache = settings.home_path / "cv" / catalogue_key
    k = args.folds
    out: dict = {"photos": str(photos), "profile": args.profile, "cores": os.cpu_count(),
                 "n_photos": len(labels), "categories": len(categories), "folds": k,
                 "seed": args.seed, "twin_threshold": args.twin_threshold,
                 "protocol": ("k-fold, group-aware, "
                              + ("near-twins ignored" if args.naive_folds else "near-twin-aware")
                              + ", stratified by category; each fold's photos query the other "
                                "folds; relevant = same category"),
                 "command": ("python -m benchmarks.bench_photos_cv "
                             + " ".join(argv or sys.argv[1:]))}

    # Near-twins, from frozen Lite0 features at 224 px (computed for the methods anyway).
    twin_plain, _, _ = frozen_vectors(everything.x, "lite0", 224, cache)
    components = twin_groups(twin_plain, args.twin_threshold,
                             everything.groups if everything.has_groups else None)
    sizes = np.bincount(np.unique(components, return_inverse=True)[1])
    out["twins"] = {"photos_in_twin_groups": int(np.sum(sizes[sizes > 1])),
                    "twin_groups": int(np.sum(sizes > 1)), "largest_group": int(sizes.max())}
    fold = stratified_group_folds(labels, components, k, args.seed)
    naive = stratified_group_folds(labels, np.arange(len(labels)), k, args.seed)
    if args.naive_folds:
        fold = naive
    out["folds_keep_twins_together"] = not args.naive_folds
    out["fold_sizes"] = np.bincount(fold, minlength=k).tolist()
    say = lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True)  # noqa: E731
    say(f"{len(labels)} photos, {out['twins']}, folds {out['fold_sizes']}")

    methods: dict[str, list[dict]] = {}
    pixels = baseline_vectors(everything.x.at_size(32))
    methods["centred_pixels_32"] = fold_scores(pixels, labels, fold, k,
                                               PIXEL_BASELINES["centred_pixels"])
    rates = {}
    for pair in (p for p in args.frozen.split(",") if p):
        variant, size = pair.split(":")
        plain, mirrored, rate = frozen_vectors(everything.x, variant, int(size), cache)
        name = f"frozen_{variant}_{size}"
        rates[name] = round(rate, 1)
        for suffix, vectors in (("", plain), ("_flip", l2_normalise(plain + mirrored))):
            methods[name + suffix] = fold_scores(vectors, labels, fold, k)
            methods[name + suffix + "_centred"] = fold_scores(vectors, labels, fold, k, centred)
        say(f"{name}: {summarise(methods[name])} flip {summarise(methods[name + '_flip'])} "
            f"centred {summarise(methods[name + '_centred'])}")
    out["frozen_embed_images_per_second"] = rates
    frozen = {n: v for n, v in methods.items() if n.startswith("frozen_")}
    strongest = max(frozen, key=lambda n: summarise(frozen[n])["recall_at_1"][0])
    out["strongest_frozen"] = strongest
    variant, size = strongest.split("_")[1:3]
    plain, mirrored, _ = frozen_vectors(everything.x, variant, int(size), cache)
    vectors = l2_normalise(plain + mirrored) if "_flip" in strongest else plain
    first = centred if strongest.endswith("_centred") else None
    for dba, qe, alpha in expansions:
        name = f"{strongest}_dba{dba:g}_qe{qe:g}_a{alpha:g}"
        methods[name] = fold_scores(vectors, labels, fold, k,
                                    chained(first, expansion(int(dba), int(qe), alpha)))
        say(f"{name}: {summarise(methods[name])}")
    precision: dict[str, list[float]] = {
        strongest: [precision_at_10(vectors, labels, fold, f, first) for f in range(k)]}
    for rule_name, rule in rules.items():
        name = f"{strongest}_{rule_name}"
        methods[name] = fold_scores(vectors, labels, fold, k, first, rule)
        precision[name] = [precision_at_10(vectors, labels, fold, f, first, rule)
                           for f in range(k)]
        say(f"{name}: {summarise(methods[name])}")
    strongest_tables = [fold_report(vectors, labels, fold, f, first).per_class for f in range(k)]
    out["per_category"] = {"folds": list(range(k)), strongest: per_category(strongest_tables)}
    out["naive_folds"] = {strongest: summarise(fold_scores(vectors, labels, naive, k, first)),
                          "note": "the same method on folds that ignore near-twins: what "
                                  "leaking them into the catalogue adds"}

    if not args.skip_finetune:
        chosen = [int(f) for f in args.only_folds.split(",") if f] or list(range(k))
        out["finetune_recipe"] = {"image": dataclasses.asdict(settings.image),
                                  "model": dataclasses.asdict(settings.model),
                                  "training": dataclasses.asdict(settings.training)}
        blends = tuple(float(b) for b in args.blends.split(",") if b)
        recipe = recipe_key(settings)
        timings = []
        tunings = []
        dealt = np.arange(len(labels)) if args.naive_folds else components
        tuned: dict[str, list[dict]] = {}
        served_tables = []  # the served vector's per-category tables, a fold each
        weights = tuple(float(w) for w in args.ensembles.split(",") if w)
        if weights:  # the frozen features of the fine-tuned backbone, at its size
            same, _, _ = frozen_vectors(everything.x, settings.model.backbone.split("_")[-1],
                                        settings.image.size, cache)
        for f in chosen:
            rows = np.flatnonzero(fold != f)
            # Keyed by the recipe and the fold's rows: a rerun resumes a fold's checkpoints,
            # never another recipe's or another split's.
            members = hashlib.sha256(rows.tobytes()).hexdigest()[:8]
            trained = settings
            if args.tuned:  # as the pipeline ships: tune, then train with the best parameters
                inner_train, inner_val = inner_split(rows, labels, dealt, args.seed)
                tuned_in = (cache / f"tune-{f}-k{k}-s{args.seed}-{recipe}-{search_key(settings)}"
                                    f"-{members}")
                tuning = tune_fold(settings, everything, inner_train, inner_val, categories,
                                   tuned_in, spark)
                tunings.append(tuning)
                say(f"fold {f}: tuned in {tuning['seconds']} s, val MAP@R "
                    f"{tuning['best_val_map_at_r']}, {tuning['trained_params']}")
                trained = apply_params(settings, tuning["trained_params"])
            work = cache / f"fold-{f}-k{k}-s{args.seed}-{recipe_key(trained)}-{members}"
            vec, timing = finetune_fold(trained, everything, rows, categories, work, blends)
            timings.append(timing)
            for name in ("head", "features"):
                vec[f"{name}_flip"] = l2_normalise(vec[name] + vec.pop(f"{name}_mirror"))
            for w in weights:
                vec[f"ensemble_w{w:g}"] = np.concatenate(
                    [np.sqrt(w) * vec["features"], np.sqrt(1 - w) * same], axis=1)
            for name, vectors in vec.items():
                report = fold_report(vectors, labels, fold, f)
                tuned.setdefault(f"finetuned_{name}", []).append(scores_of(report))
                if name == "features":
                    served_tables.append(report.per_class)
                if name.startswith("features"):
                    tuned.setdefault(f"finetuned_{name}_centred", []).append(
                        fold_score(vectors, labels, fold, f, centred))
            for dba, qe, alpha in expansions:
                tuned.setdefault(f"finetuned_features_dba{dba:g}_qe{qe:g}_a{alpha:g}", []).append(
                    fold_score(vec["features"], labels, fold, f,
                               expansion(int(dba), int(qe), alpha)))
            precision.setdefault("finetuned_features", []).append(
                precision_at_10(vec["features"], labels, fold, f))
            for rule_name, rule in rules.items():
                tuned.setdefault(f"finetuned_features_{rule_name}", []).append(
                    fold_score(vec["features"], labels, fold, f, rule=rule))
                precision.setdefault(f"finetuned_features_{rule_name}", []).append(
                    precision_at_10(vec["features"], labels, fold, f, rule=rule))
            say(f"fold {f}: {timing} head {tuned['finetuned_head'][-1]} "
                f"features {tuned['finetuned_features'][-1]}")
        methods.update(tuned)
        # Both on the fine-tuned folds' queries, so that the two compare.
        out["per_category"] = {"folds": chosen,
                               strongest: per_category([strongest_tables[f] for f in chosen]),
                               "finetuned_features": per_category(served_tables)}
        weakest = list(out["per_category"]["finetuned_features"].items())[:3]
        say(f"weakest categories of the fine-tuned features (Recall@10): {weakest}")
        out["finetune_folds"] = chosen
        out["finetune_timing"] = timings
        if args.tuned:
            out["tuning"] = {"inner_split": "a ninth of each fold's training photos, dealt "
                                            "as the folds are (inner_split)", "per_fold": tunings}
        base = [s for i, s in enumerate(methods[strongest]) if i in chosen]
        out["paired_vs_strongest_frozen"] = {
            name: {m: mean_se([a[m] - b[m] for a, b in zip(per_fold, base)]) for m in METRICS}
            for name, per_fold in tuned.items()}
    # The strongest frozen method's over every fold, the fine-tuned ones' over their folds.
    out["precision_at_10"] = {name: {"mean_se": mean_se(per_fold), "per_fold": per_fold}
                              for name, per_fold in precision.items()}
    out["methods"] = {name: {"mean_se": summarise(per_fold), "per_fold": per_fold}
                      for name, per_fold in methods.items()}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
