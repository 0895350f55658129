"""The configuration: its typed schema, its checks, and the one error of bad input.

The composed Hydra config becomes typed objects once, where a command starts (`load`: the
checks in `checks`, then the schema in `schema`); the code reads attributes
(`cfg.latency.threads`), never the raw mapping. Every problem is a `ConfigError` naming the key
and the reason in one line; the command line prints it and exits with status 2.

This room imports nothing of tnsearch's but itself (it is the floor most others stand on).
"""

from tnsearch.config.build import build
from tnsearch.config.checks import (
    COMPILE_MODES,
    DTYPES,
    LOG_MODELS,
    NAME_MAX,
    RUNTIMES,
    check_basic,
    check_heal,
    check_name,
)
from tnsearch.config.errors import ConfigError
from tnsearch.config.load import load, register
from tnsearch.config.schema import (
    SCHEMAS,
    BudgetConfig,
    CompressConfig,
    Config,
    ConstraintsConfig,
    DecomposeConfig,
    ExportConfig,
    HealConfig,
    LatencyConfig,
    PretrainConfig,
    ProbeConfig,
    ProfileConfig,
    PruningConfig,
    ReportConfig,
    ReportOptions,
    SearchConfig,
    Section,
    SpaceConfig,
    TrackingConfig,
    TrainerConfig,
)

__all__ = [
    "COMPILE_MODES",
    "DTYPES",
    "LOG_MODELS",
    "NAME_MAX",
    "RUNTIMES",
    "SCHEMAS",
    "BudgetConfig",
    "CompressConfig",
    "Config",
    "ConfigError",
    "ConstraintsConfig",
    "DecomposeConfig",
    "ExportConfig",
    "HealConfig",
    "LatencyConfig",
    "PretrainConfig",
    "ProbeConfig",
    "ProfileConfig",
    "PruningConfig",
    "ReportConfig",
    "ReportOptions",
    "SearchConfig",
    "Section",
    "SpaceConfig",
    "TrackingConfig",
    "TrainerConfig",
    "build",
    "check_basic",
    "check_heal",
    "check_name",
    "load",
    "register",
]
