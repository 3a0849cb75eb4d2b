"""Shop the look: a photo of a person wearing an outfit is answered per garment.

* :mod:`.regions` -- garment regions from body landmarks, and each region's model input;
* :mod:`.registry` -- the open detector registry (``look.detector``): a detector is one file
  here registering a factory ``(look settings) -> object with find(picture) -> Look | None``,
  plus its import below;
* :mod:`.mediapipe_pose` -- MediaPipe Pose, offline (the optional ``[look]`` extra).
"""

from __future__ import annotations

from lookalike.look.registry import detector_names, make_detector, register_detector  # noqa: F401
from lookalike.look.regions import GARMENTS, WHOLE, Look, Region  # noqa: F401

# Built-in detectors: importing a module registers it (mediapipe itself loads only when a
# detector is made).
from lookalike.look import mediapipe_pose  # noqa: E402,F401
