"""Typed settings loaded from ``conf/*.yaml``: :func:`load_settings` -> :class:`Settings`.

* :mod:`.settings` -- the sections (one frozen dataclass each) and their checks, with the
  operations sections (serving, registry, validation, deploy, MLflow) in :mod:`.operations`;
* :mod:`.loader` -- base.yaml, profile, environment and ``--set`` overrides merged, then built;
* :mod:`.schema` -- typed construction from mappings, :class:`ConfigError`.
"""

from lookalike.config.loader import (  # noqa: F401
                                     ENV_PREFIX,
                                     conf_dir,
                                     load_search_space,
                                     load_settings,
                                     settings_from_dict,
)
from lookalike.config.schema import ConfigError  # noqa: F401
from lookalike.config.settings import (  # noqa: F401
                                     IndexSettings,
                                     ModelSettings,
                                     Settings,
                                     TrainingSettings,
)
