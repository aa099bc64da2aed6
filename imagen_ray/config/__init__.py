"""Typed configuration: nested pydantic models, YAML loading, dotted overrides.

Three file types, each a strict model (unknown keys are errors):

    run      one cascade stage and its training (``configs/tiny/base.yaml``):
             text, stage (resolution, U-Net, diffusion, sampling, noise aug), data, train, wandb
    cascade  a text encoder and its stages in order (``configs/tiny/cascade.yaml``), inline
             or as paths of run files (whose ``text`` must then agree)
    serve    Ray Serve settings of a served cascade (``configs/tiny/serve.yaml``)

Modules: ``base`` (the strict base class, errors, format version), ``model`` (text encoder,
U-Net, diffusion, sampling, stage, cascade), ``run`` (data, train, wandb, the run file),
``serve`` (deployments, ingress, auth, the serve file), ``loading`` (YAML, ``--set``
overrides, validation messages, file types) and ``reference`` (the generated key table).
The vocabularies the models validate against live at or below this package, torch-free:
``dtypes`` (inference dtype names), ``grammar`` (``data.caption_key`` and ``data.filters``),
:mod:`imagen_ray.diffusion.names` (samplers, schedules, ...) and :mod:`imagen_ray.images`
(image formats).
"""

from imagen_ray.config.base import CONFIG_FORMAT_VERSION, ConfigError, Strict
from imagen_ray.config.loading import (
    FileKind,
    apply_overrides,
    file_kind,
    format_validation_error,
    load_any_config,
    load_cascade_config,
    load_model_config,
    load_run_config,
    load_serve_config,
    load_serve_file,
    parse_override,
    read_yaml,
    to_yaml,
    validate,
)
from imagen_ray.config.model import (
    CascadeConfig,
    DiffusionConfig,
    LevelConfig,
    NoiseAugConfig,
    SamplingConfig,
    StageConfig,
    TextDType,
    TextEncoderConfig,
    UNetConfig,
)
from imagen_ray.config.reference import config_reference, config_reference_markdown
from imagen_ray.config.run import (
    Crop,
    DataConfig,
    OptimizerName,
    Precision,
    RunConfig,
    TrainConfig,
    WandbConfig,
    WandbMode,
)
from imagen_ray.config.serve import (
    ServeAuthConfig,
    ServeAutoscalingConfig,
    ServeConfig,
    ServeDeploymentConfig,
    ServeFileConfig,
    ServeIngressConfig,
    ServeStageDefaultsConfig,
    ServeStageDeploymentConfig,
)

__all__ = [
    "CONFIG_FORMAT_VERSION",
    "CascadeConfig",
    "ConfigError",
    "Crop",
    "DataConfig",
    "DiffusionConfig",
    "FileKind",
    "LevelConfig",
    "NoiseAugConfig",
    "OptimizerName",
    "Precision",
    "RunConfig",
    "SamplingConfig",
    "ServeAuthConfig",
    "ServeAutoscalingConfig",
    "ServeConfig",
    "ServeDeploymentConfig",
    "ServeFileConfig",
    "ServeIngressConfig",
    "ServeStageDefaultsConfig",
    "ServeStageDeploymentConfig",
    "StageConfig",
    "Strict",
    "TextDType",
    "TextEncoderConfig",
    "TrainConfig",
    "UNetConfig",
    "WandbConfig",
    "WandbMode",
    "apply_overrides",
    "config_reference",
    "config_reference_markdown",
    "file_kind",
    "format_validation_error",
    "load_any_config",
    "load_cascade_config",
    "load_model_config",
    "load_run_config",
    "load_serve_config",
    "load_serve_file",
    "parse_override",
    "read_yaml",
    "to_yaml",
    "validate",
]
