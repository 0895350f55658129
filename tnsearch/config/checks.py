"""The checks of a composed configuration that need no model, data or storage: types and
ranges in today's one-line words, run on the plain data before it becomes typed objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tnsearch.config.errors import ConfigError

COMPILE_MODES = ("auto", "none", "default", "reduce-overhead", "max-autotune")
DTYPES = ("float32", "bfloat16")
RUNTIMES = ("torch", "onnxruntime")
LOG_MODELS = ("pareto", "all", "none")  # tnsearch.results.mlflow_models.CHOICES


def check_basic(cfg: Mapping[str, Any]) -> None:
    """Check the top-level keys that need no model, data or storage (the objectives are
    checked against the record's objective map, `tnsearch.study.setup.check_objectives`)."""
    _positive_int(cfg, "trials")
    _positive_int(cfg, "epochs", minimum=0)
    _positive_int(cfg, "retries", minimum=0)
    _positive_int(cfg, "seed", minimum=0)
    timeout = cfg.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(
            "timeout", f"must be a positive number of seconds or null, got {timeout!r}"
        )
    threads = cfg.get("threads")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ConfigError("threads", f"must be a positive integer or null, got {threads!r}")
    workers = cfg["workers"]
    if workers != "auto" and (not isinstance(workers, int) or workers < 1):
        raise ConfigError("workers", f"must be a positive integer or 'auto', got {workers!r}")
    check_name(cfg["name"])
    _positive_int(cfg["pretrain"], "epochs", prefix="pretrain.", minimum=0)
    _positive_int(cfg["pruning"], "min_epochs", prefix="pruning.", minimum=0)
    margin = cfg["pruning"]["margin"]
    if isinstance(margin, bool) or not isinstance(margin, int | float) or margin < 0:
        raise ConfigError("pruning.margin", f"must be a number >= 0, got {margin!r}")
    _flag(cfg["pruning"], "zero_shot", prefix="pruning.", null=True)
    check_heal(cfg.get("heal"))
    latency = cfg["latency"]
    _positive_int(latency, "batch_size", prefix="latency.")
    _positive_int(latency, "repeats", prefix="latency.")
    _positive_int(latency, "warmup", prefix="latency.", minimum=0)
    if latency["dtype"] not in DTYPES:
        raise ConfigError(
            "latency.dtype", f"must be one of {', '.join(DTYPES)}, got {latency['dtype']!r}"
        )
    _positive_int(latency, "attempts", prefix="latency.")
    if latency.get("threads") is not None:
        _positive_int(latency, "threads", prefix="latency.")
    noisy = latency.get("noisy")
    if not isinstance(noisy, int | float) or isinstance(noisy, bool) or noisy <= 1.0:
        raise ConfigError("latency.noisy", f"must be a number > 1 (p90 / p10), got {noisy!r}")
    tracking = cfg.get("tracking") or {}
    if tracking.get("log_models", "pareto") not in LOG_MODELS:
        raise ConfigError(
            "tracking.log_models",
            f"must be one of {', '.join(LOG_MODELS)}, got {tracking.get('log_models')!r}",
        )
    _flag(tracking, "register", prefix="tracking.", null=True)
    _flag(tracking, "bonds", prefix="tracking.", null=True)
    runtime = latency.get("runtime", "torch")
    if runtime not in RUNTIMES:
        raise ConfigError(
            "latency.runtime", f"must be one of {', '.join(RUNTIMES)}, got {runtime!r}"
        )
    for key, value in (
        ("trainer.compile", cfg["trainer"]["compile"]),
        ("latency.compile", latency["compile"]),
    ):
        if str(value) not in COMPILE_MODES:
            raise ConfigError(key, f"must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    for key in ("max_params", "max_latency", "max_latency_ms"):
        value = cfg["constraints"].get(key)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ConfigError(
                f"constraints.{key}", f"must be a positive number or null, got {value!r}"
            )


#: What healing trains: every parameter, or only the tensorized layers' (the dense ones kept).
HEAL_LAYERS = ("all", "tensorized")


def check_heal(heal: Mapping[str, Any] | None) -> None:
    """`heal.*`: distillation healing's switches, temperature (> 0) and KL weight (in [0, 1])."""
    if heal is None:
        return
    for key in ("distill", "features"):
        _flag(heal, key, prefix="heal.")
    temperature = heal["temperature"]
    if not _number(temperature) or temperature <= 0:
        raise ConfigError("heal.temperature", f"must be a number > 0, got {temperature!r}")
    alpha = heal["alpha"]
    if not _number(alpha) or not 0 <= alpha <= 1:
        raise ConfigError("heal.alpha", f"must be a number in [0, 1], got {alpha!r}")
    scale = heal.get("lr_scale", 1.0)
    if not _number(scale) or scale <= 0:
        raise ConfigError("heal.lr_scale", f"must be a number > 0, got {scale!r}")
    layers = heal.get("layers", "all")
    if layers not in HEAL_LAYERS:
        raise ConfigError("heal.layers", f"must be one of {', '.join(HEAL_LAYERS)}, got {layers!r}")
    epochs = heal.get("epochs", 0)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError("heal.epochs", f"must be an int >= 0, got {epochs!r}")


#: The longest file name most file systems take (bytes, NAME_MAX).
NAME_MAX = 255


def check_name(name: Any) -> None:
    """A study's name is one folder name inside `root`: no separators, not `.` or `..`, at most
    NAME_MAX bytes."""
    text = str(name)
    if len(text.encode()) > NAME_MAX:
        raise ConfigError(
            "name",
            f"is {len(text.encode())} bytes long; a folder name takes at most {NAME_MAX} "
            f"(got {text[:20]!r}...)",
        )
    if (
        not text.strip()
        or text in (".", "..")
        or any(sep in text for sep in ("/", "\\", "\0"))
        or text != text.strip()
    ):
        raise ConfigError(
            "name", f"must be a folder name (no '/', '\\', '.' or '..'), got {name!r}"
        )


def _positive_int(node: Mapping[str, Any], key: str, *, prefix: str = "", minimum: int = 1) -> None:
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{prefix}{key}", f"must be an integer >= {minimum}, got {value!r}")


def _flag(node: Mapping[str, Any], key: str, *, prefix: str = "", null: bool = False) -> None:
    value = node.get(key)
    if not isinstance(value, bool) and not (null and value is None):
        allowed = "true, false or null" if null else "true or false"
        raise ConfigError(f"{prefix}{key}", f"must be {allowed}, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
