"""Benchmark: shop the look's detector (``look.detector``) as serving runs it: the false-crop
rate on the shared clothing photos (flat or hanging garments must keep their whole-picture
answer) and the detector's time per photo, with and without a person.

Run: .venv/bin/python -m benchmarks.bench_look [--photos DIR]

Each photo is decoded as serving decodes it for ``look: true``
(:func:`lookalike.preprocessing.checked_picture`, at most ``look.max_side`` px) and given to
the detector. The person photos: Grace Hopper's public-domain portrait that matplotlib ships
(waist up), and a man standing head to shoes (``tests/data/people``, CC0 by its source's
statement: see that folder's README). Needs the ``[look]`` extra; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-photos"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import matplotlib

    from benchmarks.bench_look_outfits import PEOPLE, PERSONS
    from lookalike.config import load_settings
    from lookalike.look import make_detector
    from lookalike.preprocessing import checked_picture

    settings = load_settings("photos")
    look, serving = settings.look, settings.serving
    detector = make_detector(look.detector, look.as_limits())

    def picture(data: bytes):
        return checked_picture(data, look.max_side, serving.max_image_bytes, serving.max_pixels,
                               settings.catalogue.allowed_formats, serving.max_decode_bytes)

    full_body = PEOPLE / PERSONS[0]
    people = {"waist_up": (Path(matplotlib.get_data_path()) / "sample_data"
                           / "grace_hopper.jpg").read_bytes(),
              "full_body": full_body.read_bytes() if full_body.is_file() else None}
    person_photos = {}
    for name, photo in people.items():
        if photo is None:   # tests/data/people/README.md says why it may be absent
            person_photos[name] = {"absent": str(full_body)}
            continue
        person_ms, garments = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            found = detector.find(picture(photo))
            person_ms.append((time.perf_counter() - started) * 1000)
            garments = [r.garment for r in found.regions] if found else []
        person_photos[name] = {"garments": garments,
                               "p50_ms": round(float(np.median(person_ms)), 1)}
    files = sorted((Path(args.photos) / "images").glob("*.jpg"))
    flat_ms, crops = [], []
    for path in files:
        started = time.perf_counter()
        found = detector.find(picture(path.read_bytes()))
        flat_ms.append((time.perf_counter() - started) * 1000)
        if found is not None:
            crops.append(path.name)
    print(json.dumps({
        "benchmark": "look_detector", "detector": look.detector, "max_side": look.max_side,
        "require_face": look.require_face,
        "person_photos": person_photos,
        "flat_photos": {"photos": len(files), "taken_for_a_person": len(crops),
                        "false_crop_rate": round(len(crops) / max(1, len(files)), 4),
                        "files": crops[:20],
                        "p50_ms": round(float(np.median(flat_ms)), 1) if flat_ms else None},
    }))


if __name__ == "__main__":
    main()
