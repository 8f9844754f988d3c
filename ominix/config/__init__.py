"""Every configuration model of OminiX (``models``, ``runtime``) and how a config is loaded, overridden and saved
(``loading``); import the names from here."""

from ominix.config.loading import (
    PRESETS_DIR,
    build_config,
    dump_json,
    dump_yaml,
    format_validation,
    load_config,
    parse_set,
    preset_names,
    read_yaml,
    save_config,
    schema,
    write_schema,
)
from ominix.config.models import (
    SLIMPAJAMA,
    DataConfig,
    ModelConfig,
    OminixConfig,
    OptimConfig,
    ParallelConfig,
    ScheduleConfig,
)
from ominix.config.runtime import CheckpointConfig, InferConfig, LaunchConfig, LoggingConfig
from ominix.config.release import LicenseRef, ReleaseConfig, ReleaseLicenses
from ominix.config.slurm import SlurmConfig

__all__ = [
    "PRESETS_DIR", "SLIMPAJAMA", "CheckpointConfig", "DataConfig", "InferConfig", "LaunchConfig", "LicenseRef",
    "LoggingConfig", "ModelConfig", "OminixConfig", "OptimConfig", "ParallelConfig", "ReleaseConfig",
    "ReleaseLicenses", "ScheduleConfig", "SlurmConfig", "build_config", "dump_json", "dump_yaml", "format_validation",
    "load_config", "parse_set", "preset_names", "read_yaml", "save_config", "schema", "write_schema",
]
