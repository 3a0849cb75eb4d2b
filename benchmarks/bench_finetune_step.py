"""What one fine-tuning step costs on this machine, by how deep the backbone trains.

Run: .venv/bin/python -m benchmarks.bench_finetune_step --profile photos --depths 1,0.6
(about 3 minutes on 2 cores at the photos profile's Lite1 240 px; prints one JSON object)

The profile's model, loss and batch shape (``classes_per_batch`` x ``examples_per_class``
random images), compiled as training compiles it, then timed with ``train_on_batch``: with the
backbone frozen (the warm-up epochs), and fine-tuning its top ``training.finetune_depth`` share
for each of ``--depths``. Random pixels cost what photos cost; only the speed is measured here
(the quality of each depth: ``bench_photos_cv --set training.finetune_depth=...``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="photos")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--depths", default="1,0.6")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    args = parser.parse_args(argv)
    depths = [float(d) for d in args.depths.split(",") if d]

    from benchmarks.common import bench_settings
    from benchmarks.machine import probe
    from lookalike.console import quiet_environment

    quiet_environment()  # before TensorFlow's first import
    import numpy as np
    import tensorflow as tf

    from lookalike.learning.model import build_model, compile_model, set_backbone_trainable

    settings = bench_settings(args.profile, None, args.set)
    t, size = settings.training, settings.image.size
    batch = t.classes_per_batch * t.examples_per_class
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, settings.image.channels), dtype=np.float32)
    y = np.repeat(np.arange(t.classes_per_batch), t.examples_per_class)
    model = build_model(settings, num_classes=t.classes_per_batch)

    def seconds_per_step(trainable: bool, depth: float) -> dict:
        set_backbone_trainable(model, trainable, t.freeze_batchnorm, depth)
        compile_model(model, settings, tf.keras.optimizers.legacy.Adam(t.learning_rate))
        for _ in range(2):  # tracing and the first step's allocations
            model.train_on_batch(x, y)
        times = []
        for _ in range(args.steps):
            started = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - started)
        step = statistics.median(times)
        return {"trainable_weights": len(model.trainable_weights),
                "seconds_per_step": round(step, 3), "images_per_second": round(batch / step, 1)}

    out = {"benchmark": "finetune_step", "profile": settings.profile,
           "backbone": settings.model.backbone, "image_size": size, "batch": batch,
           "command": "python -m benchmarks.bench_finetune_step " + " ".join(sys.argv[1:]),
           "machine": probe(tensorflow=False),
           "head_only": seconds_per_step(False, 1.0)}
    print(f"[bench] head only: {out['head_only']}", file=sys.stderr, flush=True)
    for depth in depths:
        out[f"depth_{depth:g}"] = seconds_per_step(True, depth)
        print(f"[bench] finetune_depth {depth:g}: {out[f'depth_{depth:g}']}", file=sys.stderr,
              flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
