"""The configuration's schema: one typed dataclass per section of conf/config.yaml, and one per
command that adds keys of its own (report, export, probe).

The YAML files stay what users read and override; these classes say what each key holds, and
the code reads them as attributes (`cfg.latency.threads`). The nodes Hydra instantiates
(`model`, `data`, `task`, `sampler`, `storage`, `trainer.optimizer`, the report's evaluators)
stay mappings: their keys are the constructor's arguments, whatever class `_target_` names.

A key's comment lives in the YAML beside its default; a field's default here is the YAML's
(taken when code builds a section without the YAML: tests, Python callers, `LatencyConfig()`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

S = TypeVar("S")


class Section:
    """What every section offers: built from a mapping, and back to plain data."""

    #: The section's key in the whole config (`latency`), which its errors name.
    KEY: ClassVar[str] = ""

    @classmethod
    def of(cls: type[S], node: S | Mapping[str, Any] | None) -> S:
        """`node` as this section: itself when it is one, else built from a mapping (the keys
        it lacks take their defaults). The one door for a caller that holds plain data."""
        if isinstance(node, cls):
            return node
        from tnsearch.config.build import build

        return build(cls, dict(node or {}), prefix=cls.KEY)

    def to_dict(self) -> dict[str, Any]:
        """The section as plain data (lists, dicts, scalars), as the YAML would give it."""
        return dataclasses.asdict(self)

    def but(self: S, **changes: Any) -> S:
        """A copy with some keys changed."""
        return dataclasses.replace(self, **changes)


def _list(*values: Any):
    return field(default_factory=lambda: list(values))


@dataclass
class SpaceConfig(Section):
    KEY: ClassVar[str] = "space"

    layers: list[str] = _list("*")
    exclude: list[str] = _list()
    min_size: int = 1024
    granularity: str = "layer"
    group_depth: int = 1
    topologies: list[str] = _list("mpo", "tucker", "cp", "tree")
    orders: list[int] = _list(1, 2, 3)
    ranks: list[int] = _list(2, 4, 8, 16, 32)
    factorizations: str = "search"
    precisions: list[str] = _list("fp32")  # the weights' precisions a group chooses among
    lr: Any = None  # a list of learning rates, or null
    from_profile: bool = False
    hopeless: float = 0.5


@dataclass
class PretrainConfig(Section):
    KEY: ClassVar[str] = "pretrain"

    epochs: int = 0


@dataclass
class DecomposeConfig(Section):
    KEY: ClassVar[str] = "decompose"

    calibration: int = 256
    steps: int = 50
    batchnorm: bool = True


@dataclass
class ProfileConfig(Section):
    KEY: ClassVar[str] = "profile"

    examples: int = 512
    steps: int = 25
    measure: str = "candidates"
    budgets: list[float] = _list()


@dataclass
class BudgetConfig(Section):
    KEY: ClassVar[str] = "budget"

    params: Any = None  # a fraction in (0, 1], or null (checked with the allocation's words)
    latency: Any = None
    bytes: Any = None


@dataclass
class SearchConfig(Section):
    KEY: ClassVar[str] = "search"

    budgets: list[float] = _list(0.5, 0.25, 0.125, 0.0625)
    latency: list[float] = _list()
    bytes: list[float] | None = None  # null: `budgets` when int8 is in space.precisions


@dataclass
class CompressConfig(Section):
    KEY: ClassVar[str] = "compress"

    out: str | None = None


@dataclass
class HealConfig(Section):
    KEY: ClassVar[str] = "heal"

    epochs: int = 0
    lr_scale: float = 1.0
    layers: str = "all"
    distill: bool = False
    temperature: float = 2.0
    alpha: float = 0.5
    features: bool = False


@dataclass
class PruningConfig(Section):
    KEY: ClassVar[str] = "pruning"

    enabled: bool | None = None
    margin: float = 0.03
    min_epochs: int = 1
    zero_shot: bool | None = None


@dataclass
class LatencyConfig(Section):
    KEY: ClassVar[str] = "latency"

    batch_size: int = 64
    warmup: int = 10
    repeats: int = 50
    compile: str = "auto"  # ${trainer.compile} in the YAML
    dtype: str = "float32"
    device: str | None = None
    runtime: str = "torch"
    threads: int | None = 1
    noisy: float = 1.3
    attempts: int = 3


@dataclass
class ConstraintsConfig(Section):
    KEY: ClassVar[str] = "constraints"
    # numbers as given (an int stays an int in MLflow's params)
    max_params: Any = None
    max_latency: Any = None
    max_latency_ms: Any = None
    max_bytes: Any = None  # the weights as deployed (the `size` objective)

    def limits(self) -> dict[str, float]:
        """The limits that are set, by key."""
        return {k: v for k, v in self.to_dict().items() if v is not None}


@dataclass
class TrackingConfig(Section):
    KEY: ClassVar[str] = "tracking"

    enabled: bool = True
    uri: str = "sqlite:///studies/mlflow.db"
    artifacts: str = "studies/mlartifacts"
    log_models: str = "pareto"
    register: bool | None = True
    bonds: bool | None = True


@dataclass
class TrainerConfig(Section):
    KEY: ClassVar[str] = "trainer"

    accelerator: str = "auto"
    precision: Any = "32-true"
    compile: str = "auto"
    scheduler: str = "cosine"
    gradient_clip_val: float | None = 5.0
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05}
    )


@dataclass
class Config(Section):
    """`python -m tnsearch` (and compress, profile): conf/config.yaml."""

    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    name: str = "quick"
    root: str = "studies"
    trials: int = 6
    epochs: int = 1
    workers: Any = 1  # a positive int, or "auto"
    worker: int | None = None
    retries: int = 0
    timeout: Any = None  # seconds, or null
    seed: int = 0
    threads: int | None = None
    objectives: list[str] = _list("quality", "params", "latency")
    imports: list[str] = _list()  # modules that register objectives (`tnsearch.objectives`)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    heal: HealConfig = field(default_factory=HealConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def study_dir(self):
        """`${root}/${name}`: the study's folder."""
        from pathlib import Path

        return Path(self.root) / self.name


@dataclass
class ReportOptions(Section):
    KEY: ClassVar[str] = "report"

    path: str = "report.html"
    interactive: bool = True
    importance: dict[str, Any] = field(default_factory=dict)
    bonds: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig(Config):
    """`python -m tnsearch.report`: conf/report.yaml."""

    report: ReportOptions = field(default_factory=ReportOptions)


@dataclass
class ExportConfig(Config):
    """`python -m tnsearch.export`: conf/export.yaml."""

    trial: Any = "best-accuracy"  # a trial number or a selection (best-accuracy, ...)
    out: str | None = None


@dataclass
class ProbeConfig(Config):
    """`python -m tnsearch.bonds`: conf/probe.yaml."""

    trial: Any = None
    layer: str = ""
    bond: Any = 0  # checked with the probe's own words
    examples: Any = 512
    top: int = 3
    out: str | None = None


#: The schema of each primary config in conf/ (what `command(config_name)` composes).
SCHEMAS: dict[str, type[Config]] = {
    "config": Config,
    "report": ReportConfig,
    "export": ExportConfig,
    "probe": ProbeConfig,
}
