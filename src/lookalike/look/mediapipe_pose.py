"""The garment detector of ``look.detector: mediapipe_pose``: MediaPipe Pose (BlazePose,
``model_complexity=1``: the model the mediapipe 0.10.21 wheel ships, so it works offline), its
person mask, and with ``look.require_face`` MediaPipe's full-range face detector: Pose alone
took 3 of 60 hanging garments on the shared clothing photos for people (the hanger's hook as a
head), the face detector none of its 22 pose hits among 439 of them. Install with
``pip install 'lookalike[look]'``."""

from __future__ import annotations

import threading

import numpy as np

from lookalike.look.registry import register_detector
from lookalike.look.regions import Look, regions_from_landmarks

INSTALL_HINT = ("shop the look needs mediapipe: pip install 'lookalike[look]' (mediapipe 0.10.21, "
                "the last release that ships the Pose model in its wheel)")


class MediaPipePose:
    """``find(picture) -> Look | None``; one Pose graph per detector, used by one thread at a
    time (MediaPipe graphs are not re-entrant)."""

    def __init__(self, min_visibility: float, require_face: bool):
        try:
            from mediapipe.python.solutions import face_detection, pose
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
        self._pose = pose.Pose(static_image_mode=True, model_complexity=1,
                               enable_segmentation=True)
        self._faces = (face_detection.FaceDetection(model_selection=1,
                                                    min_detection_confidence=0.5)
                       if require_face else None)
        self._lock = threading.Lock()
        self.min_visibility, self.require_face = min_visibility, require_face

    def find(self, picture) -> Look | None:
        """Garment regions on an RGB PIL picture, or None when no person wears garments."""
        pixels = np.asarray(picture.convert("RGB"))
        with self._lock:
            result = self._pose.process(pixels)
            if result.pose_landmarks is None:
                return None
            points = np.array([(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark])
            regions = regions_from_landmarks(points, picture.width, picture.height,
                                             self.min_visibility, self.require_face)
            if not regions or (self._faces is not None
                               and not self._faces.process(pixels).detections):
                return None
        mask = None if result.segmentation_mask is None else np.asarray(result.segmentation_mask)
        return Look(regions, mask)


@register_detector("mediapipe_pose", "MediaPipe Pose landmarks and person mask (offline, CPU)")
def _mediapipe_pose(settings) -> MediaPipePose:
    return MediaPipePose(settings["min_visibility"], settings["require_face"])
