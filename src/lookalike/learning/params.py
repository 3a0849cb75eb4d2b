"""Tuned parameters, shared by tuning (which finds them) and training (which applies them):
how they apply to the settings, which of them training applies, and the key that says which
settings they are valid for."""

from __future__ import annotations

import dataclasses
from typing import Any

from lookalike.config import Settings

# Tag of a tuning run: its tuning_key.
TUNING_KEY_TAG = "lookalike.tuning_key"


def apply_params(settings: Settings, params: dict[str, Any]) -> Settings:
    """Settings with tuned parameters applied (names of ``model.*`` / ``training.*`` fields)."""
    model_fields = {f.name for f in dataclasses.fields(settings.model)}
    training_fields = {f.name for f in dataclasses.fields(settings.training)}
    model, training = {}, {}
    for name, value in params.items():
        if name in model_fields:
            model[name] = value
        elif name in training_fields:
            training[name] = value
        else:
            raise ValueError(f"tuned parameter {name!r} is neither a model nor a training setting")
    return settings.replace(model=model, training=training)


def trained_params(settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
    """The tuned parameters training applies: all but ``tuning.exclude_from_training``."""
    skip = set(settings.tuning.exclude_from_training)
    return {k: v for k, v in params.items() if k not in skip}


def tuning_key(settings: Settings, products_version: int) -> str:
    """What tuned parameters are only valid for: profile, backbone, served vector (and how: its
    flip and its blend with the pretrained weights), the loss's proxy term, input geometry,
    objective and the catalogue version they were searched on (training applies a
    tuning run's best parameters only when its key is the same)."""
    m = settings.model
    return (f"profile={settings.profile};backbone={m.backbone};"
            f"embedding={m.embedding_from};"
            f"proxy={m.proxy_weight:g}x{m.proxy_scale:g};flip={int(m.test_time_flip)};"
            f"blend={settings.training.finetune_blend:g};"
            f"image={settings.image.size}x{settings.image.channels};"
            f"objective={settings.tuning.objective};products={int(products_version)}")
