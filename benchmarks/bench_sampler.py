"""Cost of forming one class-balanced training batch: decoding each sampled row from the
encoded split cache, against reading it from a float32 array (the path for shards under
``training.max_decoded_bytes``). Prints one JSON line.

    .venv/bin/python -m benchmarks.bench_sampler CACHE_DIR   # LOOKALIKE_HOME/cache/arrays/<key>
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", help="a split's folder under LOOKALIKE_HOME/cache/arrays")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args(argv)

    from tensorflow_similarity.samplers import MultiShotMemorySampler

    from lookalike.learning.data import read_split_dir

    split = read_split_dir(args.cache_dir, args.size, args.channels)
    lookup = {c: i for i, c in enumerate(sorted(set(split.labels)))}
    y = np.array([lookup[c] for c in split.labels], dtype=np.int32)
    out = {"rows": len(split.x), "encoded_bytes": split.x.nbytes_encoded}
    started = time.perf_counter()
    dense = split.x[:]
    out["decode_all_seconds"] = round(time.perf_counter() - started, 2)
    for name, x, load in (("encoded", np.arange(len(y)), split.x.__getitem__),
                          ("float32", dense, lambda example: example)):
        random.seed(0)
        sampler = MultiShotMemorySampler(x, y, load_example_fn=load, classes_per_batch=10,
                                         examples_per_class_per_batch=16,
                                         steps_per_epoch=args.batches)
        sampler[0]
        started = time.perf_counter()
        for i in range(args.batches):
            sampler[i]
        out[f"{name}_ms_per_batch"] = round((time.perf_counter() - started) * 1000
                                            / args.batches, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
