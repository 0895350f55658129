"""The study: check the configuration, open the Optuna study, run trials until it holds `trials`.

`prepare` reads and checks everything (nothing is written); `open_study` creates or joins the
study; `work` is one worker's ask/tell loop; `finish` writes the Pareto outputs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from tnsearch import console, liveness, pareto, pruning, tn, warmstart, workers
from tnsearch import plan as plans
from tnsearch.config import OBJECTIVES, ConfigError, check_basic
from tnsearch.progress import Progress
from tnsearch.pruning import ParetoPruner
from tnsearch.space import Space

#: Trial states that count towards `trials` (failed and surplus trials do not).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyStopped(RuntimeError):
    """The worker gave up: every recent trial failed or was infeasible."""


@dataclass
class Setup:
    """Everything a worker needs, read and checked once."""

    cfg: dict[str, Any]  # the resolved configuration
    space: Space
    datamodule: Any
    inputs: dict[str, int]
    dense_params: int
    study_dir: Path
    pretrained: dict[str, torch.Tensor] | None = None  # trained dense weights (warm start)
    pruner: ParetoPruner | None = None

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[name] for name in self.cfg["objectives"]]


def quiet() -> None:
    """Silence library chatter that says nothing to a tnsearch user."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    warnings.filterwarnings("ignore", message=".*multivariate.*")


def resolve(cfg) -> dict[str, Any]:
    """The composed Hydra config as plain data; a missing mandatory value is a ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(str(exc.full_key), "is required but not set") from None
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "config")
        raise ConfigError(key, str(exc).splitlines()[0]) from None


def prepare(cfg: Mapping[str, Any]) -> Setup:
    """Check the whole configuration against the model, data and storage; write nothing."""
    from hydra.utils import instantiate

    quiet()
    check_basic(cfg)
    resolve_compile(cfg)
    try:
        datamodule = instantiate(cfg["data"], _convert_="all")
        if hasattr(datamodule, "check"):
            datamodule.check()
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise ConfigError.from_exception(exc, "data") from None
    inputs = {
        "in_channels": int(datamodule.in_channels),
        "image_size": int(datamodule.image_size),
        "num_classes": int(datamodule.num_classes),
    }
    try:
        dense = plans.build_dense(plans.make(cfg["model"], inputs, {}))
    except Exception as exc:  # noqa: BLE001 - any constructor error is a model config error
        raise ConfigError.from_exception(_root_cause(exc), "model") from None
    space = Space.from_config(cfg["space"], dense)
    checkpoint = cfg["model"].get("checkpoint")
    if checkpoint and cfg["pretrain"]["epochs"]:
        raise ConfigError("pretrain.epochs", "give either model.checkpoint or pretrain.epochs")
    state = warmstart.load_checkpoint(checkpoint, dense) if checkpoint else None
    try:
        instantiate(cfg["sampler"])
    except Exception as exc:  # noqa: BLE001
        raise ConfigError.from_exception(_root_cause(exc), "sampler") from None
    from tnsearch.storage import check_reachable

    check_reachable(cfg["storage"])
    return Setup(
        cfg=dict(cfg),
        space=space,
        datamodule=datamodule,
        inputs=inputs,
        dense_params=tn.n_params(dense),
        study_dir=Path(cfg["root"]) / cfg["name"],
        pretrained=state,
        pruner=pruning.from_config(cfg),
    )


def resolve_compile(cfg: dict[str, Any]) -> None:
    """Turn `compile: auto` into a mode: CUDA graphs on a GPU, where a tensorized model's many
    small kernels cost launches (measured on an H100: eager ResNet-20 with Tucker-2 convs infers
    at 2.10x the dense time, compiled with reduce-overhead at 1.18x); eager on a CPU, where
    compiling a ResNet-20 costs 1-2 minutes per trial and makes a Tucker-2 model train slower
    (measured on 2 cores: 224 ms eager, 309 ms compiled; bench/RESULTS.md)."""
    on_gpu = trial_device(cfg).type == "cuda"
    for node in (cfg["trainer"], cfg["latency"]):
        if node["compile"] == "auto":
            node["compile"] = "reduce-overhead" if on_gpu else "none"


def _root_cause(exc: BaseException) -> BaseException:
    """Hydra wraps constructor errors; the user wants the constructor's own message."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def open_study(setup: Setup) -> optuna.Study:
    """Create the study or join it; make sure its first trial is the dense model."""
    from hydra.utils import instantiate

    cfg = setup.cfg
    storage = instantiate(cfg["storage"])
    study = create_study_with_retry(
        storage=storage,
        study_name=cfg["name"],
        directions=setup.directions,
        sampler=make_sampler(cfg),
        load_if_exists=True,
    )
    if study.metric_names is None:
        study.set_metric_names(list(cfg["objectives"]))
    elif list(study.metric_names) != list(cfg["objectives"]):
        raise ConfigError(
            "objectives",
            f"study {cfg['name']!r} was created with {study.metric_names}; "
            "use another name= for other objectives",
        )
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(setup.space.dense_params(), skip_if_exists=True)
        study.set_user_attr("dense_params", setup.dense_params)
    return study


def create_study_with_retry(**kwargs) -> optuna.Study:
    """`optuna.create_study`, retried: workers starting together on a fresh RDB race to create
    its schema (optuna#1092), and all but one fail once."""
    for attempt in range(5):
        try:
            return optuna.create_study(**kwargs)
        except Exception:  # noqa: BLE001
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def make_sampler(cfg: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    """The configured sampler; each worker of a study gets its own seed, so that workers
    starting together do not propose the same plans."""
    from hydra.utils import instantiate

    node = dict(cfg["sampler"])
    if node.get("seed") is not None and cfg.get("worker") is not None:
        node["seed"] = int(node["seed"]) + 7919 * (int(cfg["worker"]) + 1)
    return instantiate(node)


def counted(study: optuna.Study) -> int:
    """Trials that count towards the target: finished, feasible, not failed."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=COUNTED)
        if t.user_attrs.get("trained", True)
    )


def work(setup: Setup, study: optuna.Study, tracker) -> int:
    """Ask and run trials until the study holds `trials` counted trials; return how many ran."""
    from tnsearch.trial import run_trial

    target = setup.cfg["trials"]
    started = time.monotonic()
    timeout = setup.cfg.get("timeout")
    if setup.cfg["pretrain"]["epochs"] and setup.pretrained is None:
        setup.pretrained = warmstart.pretrained(
            setup.study_dir, setup.cfg["pretrain"]["epochs"], lambda: pretrain(setup)
        )
    console.say(
        f"worker {liveness.worker_id()} joined study {study.study_name!r}: "
        f"{counted(study)}/{target} trials done"
    )
    ran = 0
    stuck = _Stuck(target)
    # The live status line: only in a terminal, and only in the parent (it counts all workers).
    status = Progress(
        target,
        enabled=False if workers.is_spawned() else None,
        workers=workers.count(setup.cfg["workers"]) if setup.cfg["worker"] is None else 1,
    )
    with status:
        status.update(study)
        while True:
            liveness.reap(study, tracker)
            if counted(study) >= target:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                console.say(f"timeout: {timeout} s passed, no new trial started")
                break
            trial = study.ask()
            if _surplus(study, trial, target):
                reason = "surplus: the study reached its target meanwhile"
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                break
            outcome = run_trial(setup, study, trial, tracker)
            status.update(study)
            ran += 1
            stuck.check(outcome)
    return ran


class _Stuck:
    """Gives up when no trial has trained for too long: every recent plan failed, or was
    infeasible or a repeat. One bad plan fails alone; a broken setup fails them all."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.untrained = self.failed = 0

    def check(self, outcome: str) -> None:
        self.untrained = self.untrained + 1 if outcome in ("infeasible", "duplicate") else 0
        self.failed = self.failed + 1 if outcome == "failed" else 0
        if self.untrained >= max(100, 10 * self.target):
            raise StudyStopped(
                f"{self.untrained} infeasible or repeated plans in a row: "
                "loosen constraints.* or widen the space"
            )
        if self.failed >= max(5, self.target):
            raise StudyStopped(
                f"{self.failed} failed trials in a row (see their fail_reason): "
                "something is wrong beyond one plan"
            )


def pretrain(setup: Setup) -> dict[str, torch.Tensor]:
    """Train the dense model for `pretrain.epochs` (seeded with `seed`); return its weights."""
    from hydra.utils import instantiate

    from tnsearch import training

    cfg = setup.cfg
    torch.manual_seed(cfg["seed"])
    model = plans.build_dense(plans.make(cfg["model"], setup.inputs, {}))
    module = training.Classifier(
        model,
        optimizer=instantiate(dict(cfg["trainer"]["optimizer"])),
        scheduler=cfg["trainer"].get("scheduler", "cosine"),
    )
    result = training.fit(
        module, setup.datamodule, epochs=cfg["pretrain"]["epochs"], trainer_cfg=cfg["trainer"]
    )
    console.say(f"pretrained dense model: val acc {result.val_acc:.4f}")
    return model.state_dict()


def _surplus(study: optuna.Study, trial: optuna.Trial, target: int) -> bool:
    """True when earlier trials (counted or still running) already make up the target."""
    ahead = sum(
        1
        for t in study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING))
        if t.number < trial.number and t.user_attrs.get("trained", True)
    )
    return ahead >= target


def finish(setup: Setup, study: optuna.Study, tracker) -> list[dict[str, Any]]:
    """Write pareto.csv and the plot, show the front, and attach both to the parent run."""
    rows = [pareto.row(t) for t in pareto.front(study)]
    setup.study_dir.mkdir(parents=True, exist_ok=True)
    csv_path = pareto.write_csv(rows, setup.study_dir / "pareto.csv")
    files = [csv_path]
    if rows:
        files.append(pareto.plot(study, setup.study_dir / "pareto.png"))
    console.say("\nPareto front (" + ", ".join(setup.cfg["objectives"]) + "):")
    console.say(pareto.table(rows))
    tracker.log_parent(files=files)
    return rows


def running(study: optuna.Study) -> int:
    """Trials still running (on any worker)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def trial_device(cfg: Mapping[str, Any]) -> torch.device:
    """The device trials train on: a GPU when present and allowed, else the CPU."""
    accelerator = cfg["trainer"]["accelerator"]
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
