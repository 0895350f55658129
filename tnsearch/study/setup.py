"""Before a study runs: check the configuration, then create or join the Optuna study.

`prepare` reads and checks everything against the model, data and storage (nothing is
written); `open_study` creates the study or joins it and makes its first trial the dense model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from tnsearch import objectives, tn
from tnsearch import plan as plans
from tnsearch.config import Config, ConfigError, load
from tnsearch.measure import latency, quantize
from tnsearch.space import Space
from tnsearch.study import identity, pruning, record, warmstart
from tnsearch.study.pruning import ParetoPruner
from tnsearch.ui import Console
from tnsearch.ui.chatter import quiet


@dataclass
class Setup:
    """Everything a worker needs, read and checked once."""

    cfg: Config  # the typed configuration, `trainer.compile` / `latency.compile` resolved
    space: Space
    datamodule: Any
    inputs: dict[str, int]
    dense_params: int
    study_dir: Path
    pretrained: dict[str, torch.Tensor] | None = None  # trained dense weights (warm start)
    pruner: ParetoPruner | None = None
    console: Console = field(default_factory=Console)

    @property
    def metric(self) -> str:
        """The task's name of its quality (accuracy, fidelity, ...)."""
        return task_metric(self.cfg)[0]

    @property
    def metric_names(self) -> list[str]:
        """The study's objectives by name: `quality` under the task's own name."""
        return metric_names(self.cfg)

    @property
    def directions(self) -> list[str]:
        quality = task_metric(self.cfg)[1]
        return [objectives.direction(name, quality) for name in self.metric_names]

    def teacher(self) -> torch.nn.Module:
        """The trained dense model (built once per worker), for tasks that learn from it."""
        if getattr(self, "_teacher", None) is None:
            if self.pretrained is None:
                raise ConfigError("task", "this task needs the trained dense model")
            plan = plans.make(self.cfg.model, self.inputs, {})
            dense = plans.build_dense(plan, trusted=plans.trusted_models(self.cfg.model))
            dense.load_state_dict(self.pretrained)
            self._teacher = dense.eval()
        return self._teacher

    @property
    def timing(self) -> latency.Timing:
        """How every latency of the study is measured: `latency.*`, on the trial's device
        unless `latency.device` says otherwise."""
        return latency.Timing.of(self.cfg.latency, device=str(trial_device(self.cfg)))

    def latency_reference(self) -> torch.nn.Module:
        """The dense model every trial's latency is timed beside (built once per worker, with
        the trained weights when there are some), in eval mode."""
        if getattr(self, "_latency_reference", None) is None:
            plan = plans.make(self.cfg.model, self.inputs, {})
            dense = plans.build_dense(plan, trusted=plans.trusted_models(self.cfg.model))
            if self.pretrained is not None:
                dense.load_state_dict(self.pretrained)
            self._latency_reference = dense.eval()
        return self._latency_reference

    def latency_reference_onnx(self, example: torch.Tensor) -> Path:
        """`latency_reference` exported to ONNX once per worker (`latency.runtime=onnxruntime`),
        in a folder of this process that goes with it."""
        if getattr(self, "_latency_reference_onnx", None) is None:
            import atexit
            import shutil
            import tempfile

            from tnsearch.measure import onnx

            folder = Path(tempfile.mkdtemp(prefix="tnsearch-dense-onnx-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            path = folder / "dense.onnx"
            onnx.export(self.latency_reference(), example, path, check=False)
            self._latency_reference_onnx = path
        return self._latency_reference_onnx

    def task(self, model: torch.nn.Module, optimizer) -> Any:
        """The LightningModule of the configured task (`task=classify`, `task=distill`, ...)
        that trains `model` with `optimizer` (a partial: called with the parameters)."""
        from hydra.utils import instantiate

        make = instantiate(task_node(self.cfg))
        target = getattr(make, "func", make)
        offered = {
            "optimizer": optimizer,
            "scheduler": self.cfg.trainer.scheduler,
        }
        if _needs_teacher(self.cfg):  # built once per worker, only for tasks that take one
            offered["teacher"] = self.teacher()
        # A user's module takes what its signature names (the model first, always).
        return make(model, **plans.facts_for(target, offered))


#: Task config keys that are not constructor arguments.
TASK_KEYS = ("metric", "direction")
#: The task `heal.distill=true` makes of `task=classify`: the dense model teaches it too.
DISTILLED = "tnsearch.measure.distill.DistilledClassifier"
CLASSIFY = "tnsearch.measure.training.Classifier"


def task_node(cfg: Config) -> dict[str, Any]:
    """The task's constructor config: `task.*` less TASK_KEYS; with `heal.distill`, the
    classifier that learns from the dense model as well as from the labels."""
    node = {k: v for k, v in cfg.task.items() if k not in TASK_KEYS}
    heal = cfg.heal
    if heal.distill:
        node.update(
            _target_=DISTILLED,
            temperature=heal.temperature,
            alpha=heal.alpha,
            features=heal.features,
        )
    return node


def task_metric(cfg: Config) -> tuple[str, str]:
    """(name, direction) of the task's quality: `task.metric` / `task.direction` when the
    config gives them, else the task class's `metric` / `direction` (accuracy, maximize)."""
    node = cfg.task
    found = None
    if node.get("metric") is None or node.get("direction") is None:
        found = plans.constructor(str(node["_target_"]))
    name = node.get("metric") or getattr(found, "metric", "accuracy")
    direction = node.get("direction") or getattr(found, "direction", "maximize")
    return str(name), str(direction)


def metric_names(cfg: Config) -> list[str]:
    """The objectives by their metric names (Optuna's, MLflow's): `quality` as the task names
    it, a registered objective by its metric (`params` as param_count, `latency` as
    latency_ratio)."""
    name = task_metric(cfg)[0]
    registered = objectives.registered()
    return [
        name if o == objectives.QUALITY else registered[o].metric if o in registered else o
        for o in cfg.objectives
    ]


def check_objectives(cfg: Config) -> None:
    """`objectives` must name quality (or the task's metric) and registered objectives (the
    modules under `imports` register theirs), each once."""
    names = list(cfg.objectives)
    metric, direction = task_metric(cfg)
    try:
        objectives.import_modules(cfg.imports)
    except ImportError as exc:
        raise ConfigError("imports", f"cannot import: {exc}") from None
    known = [objectives.QUALITY, *objectives.registered()]
    if not names:
        raise ConfigError("objectives", f"must name at least one of {', '.join(known)}")
    for name in names:
        if name not in (*known, metric):
            raise ConfigError(
                "objectives",
                f"unknown {name!r} (known: {', '.join(known)}; the quality is {metric!r})",
            )
    if len(set(metric_names(cfg))) != len(names):
        raise ConfigError("objectives", f"duplicates in {names}")
    if direction not in ("maximize", "minimize"):
        raise ConfigError("task.direction", f"must be maximize or minimize, got {direction!r}")


def check_precisions(cfg: Config) -> None:
    """Each of `space.precisions` must run where trials are timed and deployed (`latency.runtime`
    on the trial's device): int8 in torch has CPU kernels only."""
    device = cfg.latency.device or str(trial_device(cfg))
    for name in cfg.space.precisions:
        try:
            quantize.check_precision(name, cfg.latency.runtime, device)
        except ValueError as exc:
            reason = str(exc).removeprefix("precision: ")
            raise ConfigError("space.precisions", reason) from None
    for value in cfg.search.bytes or ():  # the ladder's byte rungs (`sensitivity.byte_rungs`)
        if not 0 < value <= 1:
            raise ConfigError("search.bytes", f"must be fractions in (0, 1], got {value!r}")


def prepare(cfg: Config | Mapping[str, Any], console: Console | None = None) -> Setup:
    """Check the whole configuration against the model, data and storage; write nothing
    (`cfg` as plain data is loaded first: `tnsearch.config.load`)."""
    from hydra.utils import instantiate

    quiet()
    cfg = cfg if isinstance(cfg, Config) else load(cfg, Config)
    check_task(cfg)
    check_objectives(cfg)
    check_precisions(cfg)
    use_threads(cfg)
    cfg = resolve_compile(cfg)
    try:
        datamodule = instantiate(cfg.data, _convert_="all")
        if hasattr(datamodule, "check"):
            datamodule.check()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra wraps the data module's own ConfigError
        cause = _root_cause(exc)
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError.from_exception(cause, "data") from None
    inputs = data_facts(datamodule)
    try:
        dense = plans.build_dense(
            plans.make(cfg.model, inputs, {}), trusted=plans.trusted_models(cfg.model)
        )
    except Exception as exc:  # noqa: BLE001 - any constructor error is a model config error
        raise ConfigError.from_exception(_root_cause(exc), "model") from None
    space = Space.from_config(cfg.space, dense)
    check_training(cfg, dense)
    check_takes_data(cfg, dense, datamodule)
    checkpoint = cfg.model.get("checkpoint")
    if checkpoint and cfg.pretrain.epochs:
        raise ConfigError("pretrain.epochs", "give either model.checkpoint or pretrain.epochs")
    state = warmstart.load_checkpoint(checkpoint, dense) if checkpoint else None
    if state is None and not cfg.pretrain.epochs and _comes_trained(cfg.model):
        # A pretrained model is warm by default: the dense trial is the model itself, and
        # every trial starts from the decomposition of its layers.
        state = {k: v.detach().clone() for k, v in dense.state_dict().items()}
    warm = state is not None or bool(cfg.pretrain.epochs)
    check_heal(cfg, dense, warm=warm)
    if not warm and _needs_teacher(cfg):
        raise ConfigError(
            "task",
            "distillation needs a trained dense model to teach: give model.checkpoint, "
            "pretrain.epochs, or a model with pretrained weights (model=hf)",
        )
    try:
        sampler = instantiate(cfg.sampler)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError.from_exception(_root_cause(exc), "sampler") from None
    from tnsearch.study.optuna_internals import reseed

    if cfg.sampler.get("seed") is not None and not reseed(sampler, 0):
        raise ConfigError(
            "sampler.seed",
            f"{type(sampler).__name__} keeps no random state tnsearch can seed for each trial: "
            "sampler.seed=null runs it unseeded",
        )
    from tnsearch.study.storage import check_reachable
    from tnsearch.study.tracking import check_server

    check_reachable(cfg.storage)
    check_server(cfg.tracking)
    check_writable(cfg.study_dir)
    warmstart.check_pretrained(cfg.study_dir, cfg)
    setup = Setup(
        cfg=cfg,
        space=space,
        datamodule=datamodule,
        inputs=inputs,
        dense_params=tn.n_params(dense),
        study_dir=cfg.study_dir,
        pretrained=state,
        pruner=pruning.from_config(cfg, maximize=task_metric(cfg)[1] == "maximize", warm=warm),
        console=console or Console(),
    )
    check_user_task(setup, dense)
    check_runtime(setup)
    return setup


def use_threads(cfg: Config) -> int:
    """Set this process's CPU threads (`threads`; null: what fits the CPUs it may use, shared
    with the local workers and less what others keep busy: `tnsearch.threads`)."""
    from tnsearch import threads
    from tnsearch.study import workers

    given = cfg.threads
    local = 1
    if cfg.worker is None and not workers.is_spawned():
        local = workers.count(cfg.workers)
    return threads.apply(threads.count(given, workers=local))


def check_runtime(setup: Setup) -> None:
    """`latency.runtime=onnxruntime` needs onnxruntime and a model of one tensor input (the
    exported ONNX of a token model is not made yet)."""
    if setup.cfg.latency.runtime != "onnxruntime":
        return
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(
            "latency.runtime", "onnxruntime is not installed (pip install onnxruntime)"
        ) from None
    from tnsearch.measure import latency

    if not isinstance(latency.example_batch(setup.datamodule, 2), torch.Tensor):
        raise ConfigError(
            "latency.runtime",
            "onnxruntime times models of one tensor input (e.g. images); this data gives a "
            "dict of tensors (a token model): use latency.runtime=torch",
        )


def check_takes_data(cfg: Config, dense: torch.nn.Module, datamodule: Any) -> None:
    """The dense model must take the data's inputs as every trial's latency measurement gives
    them (`model(x)`, or `model(**x)` for a dict), so that a text model on image data (or the
    reverse) stops here, not in five failed trials after the study is written. Two examples,
    eval mode, no gradients; a user's own task is validated whole (`check_user_task`)."""
    from tnsearch.measure import latency, training

    target = plans.constructor(str(cfg.task["_target_"]))
    if not (isinstance(target, type) and issubclass(target, training.Classifier)):
        return
    try:
        example = latency.example_batch(datamodule, 2)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the data's own error
        raise ConfigError.from_exception(_root_cause(exc), "data") from None
    was_training = dense.training
    try:
        with torch.no_grad():
            dense.eval()
            if isinstance(example, Mapping):
                dense(**example)
            else:
                dense(example)
    except Exception as exc:  # noqa: BLE001 - any error means the two do not fit
        raise ConfigError(
            "model",
            f"{cfg.model['_target_']} does not take the inputs of {cfg.data['_target_']} "
            f"({_describe(example)}): {type(exc).__name__}: {_first_line(exc)}",
        ) from None
    finally:
        dense.train(was_training)


def _describe(example: Any) -> str:
    """A batch's inputs in a few words: "float32 (2, 1, 8, 8)", "dict of input_ids, ..."."""
    if isinstance(example, Mapping):
        return "a dict of " + ", ".join(example)
    return f"{str(example.dtype).removeprefix('torch.')} {tuple(example.shape)}"


def check_user_task(setup: Setup, dense: torch.nn.Module) -> None:
    """A user's LightningModule is built on the dense model and validated on one batch, so that
    a module that does not build or never logs `task.metric` stops here."""
    import copy

    from hydra.utils import instantiate

    from tnsearch.measure import training

    target = plans.constructor(str(setup.cfg.task["_target_"]))
    if isinstance(target, type) and issubclass(target, training.Classifier):
        return  # tnsearch's own tasks
    optimizer = instantiate(dict(setup.cfg.trainer.optimizer))
    try:
        module = setup.task(copy.deepcopy(dense), optimizer)
        training.check_logs(module, setup.datamodule, setup.metric)
    except training.MetricNotLoggedError as exc:
        raise ConfigError.from_exception(exc, "task.metric") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed: name it
        raise ConfigError("task._target_", f"{type(exc).__name__}: {_first_line(exc)}") from None


SCHEDULERS = ("cosine", "none")
#: The facts a data module may tell a model's factory (passed where its signature names them).
FACTS = ("in_channels", "image_size", "num_classes", "vocab_size", "max_length")


def data_facts(datamodule: Any) -> dict[str, int]:
    """The data's facts: its `facts` mapping if it has one, else the attributes of FACTS it has."""
    found = getattr(datamodule, "facts", None)
    if isinstance(found, Mapping):
        return {str(k): int(v) for k, v in found.items()}
    return {name: int(getattr(datamodule, name)) for name in FACTS if hasattr(datamodule, name)}


def check_training(cfg: Config, dense: torch.nn.Module) -> None:
    """Build the optimizer once on the dense model, and check the scheduler and the latency
    device, so that a wrong value stops here and not after a few failed trials."""
    from hydra.utils import instantiate

    trainer = cfg.trainer
    if trainer.scheduler not in SCHEDULERS:
        raise ConfigError(
            "trainer.scheduler",
            f"must be one of {', '.join(SCHEDULERS)}, got {trainer.scheduler!r}",
        )
    try:
        make = instantiate(dict(trainer.optimizer))
        make(dense.parameters())
    except Exception as exc:  # noqa: BLE001 - any optimizer error is a config error
        raise ConfigError("trainer.optimizer", _first_line(_root_cause(exc))) from None
    device = cfg.latency.device
    if device is not None:
        try:
            where = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError("latency.device", _first_line(exc)) from None
        if where.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("latency.device", f"{device!r}: no CUDA device is visible")


def check_task(cfg: Config) -> None:
    """`task._target_` must import and be a LightningModule class (or factory)."""
    target = cfg.task.get("_target_")
    try:
        plans.constructor(str(target))
    except ImportError as exc:
        raise ConfigError("task._target_", str(exc).split(": ", 1)[-1]) from None


def check_heal(cfg: Config, dense: torch.nn.Module, *, warm: bool) -> None:
    """`heal.distill` needs `task=classify` and a trained dense model to teach; `heal.features`
    a Linear layer whose input to match, read by hooks on an eager (not compiled) model."""
    from tnsearch.measure.distill import last_linear

    heal = cfg.heal
    if not heal.distill:
        return
    target = str(cfg.task["_target_"])
    if target != CLASSIFY:
        raise ConfigError(
            "heal.distill",
            f"distills task=classify only, not {target} (task=distill learns from the dense "
            "model already; a LightningModule of yours trains as it is written)",
        )
    if not warm:
        raise ConfigError(
            "heal.distill",
            "needs a trained dense model to teach: give model.checkpoint, pretrain.epochs, or "
            "a model with pretrained weights (model=hf)",
        )
    if heal.features:
        if last_linear(dense) is None:
            raise ConfigError("heal.features", "the model has no nn.Linear whose input to match")
        if cfg.trainer.compile != "none":
            raise ConfigError(
                "heal.features",
                "reads the features with forward hooks on the eager model: set "
                f"trainer.compile=none (it is {cfg.trainer.compile})",
            )


def _needs_teacher(cfg: Config) -> bool:
    import inspect

    found = plans.constructor(str(task_node(cfg)["_target_"]))
    try:
        return "teacher" in inspect.signature(found).parameters
    except (TypeError, ValueError):
        return False


def _comes_trained(model_cfg: Mapping[str, Any]) -> bool:
    """Whether the model's constructor loads trained weights (`from_pretrained.pretrained`)."""
    return bool(getattr(plans.constructor(str(model_cfg.get("_target_"))), "pretrained", False))


def check_writable(folder: Path) -> None:
    """The study folder (or the nearest folder it would be made in) must be a writable folder
    on a disk with room; checked without writing anything."""
    import os
    import shutil

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError("root", f"cannot write {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("root", f"cannot write {folder}: {existing} is read-only")
    if shutil.disk_usage(existing).free < 16 * 2**20:
        raise ConfigError("root", f"no space left on the disk of {existing} (under 16 MiB free)")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def resolve_compile(cfg: Config) -> Config:
    """Turn `compile: auto` into a mode: CUDA graphs on a GPU, where a tensorized model's many
    small kernels cost launches (measured on an H100: eager ResNet-20 with Tucker-2 convs infers
    at 2.10x the dense time, compiled with reduce-overhead at 1.18x); eager on a CPU, where
    compiling a ResNet-20 costs 1-2 minutes per trial and makes a Tucker-2 model train slower
    (measured on 2 cores: 224 ms eager, 309 ms compiled; bench/RESULTS.md)."""
    mode = "reduce-overhead" if trial_device(cfg).type == "cuda" else "none"
    trainer, latency_ = cfg.trainer, cfg.latency
    return cfg.but(
        trainer=trainer.but(compile=mode) if trainer.compile == "auto" else trainer,
        latency=latency_.but(compile=mode) if latency_.compile == "auto" else latency_,
    )


def trial_device(cfg: Config) -> torch.device:
    """The device trials train on: a GPU when present and allowed, else the CPU."""
    accelerator = cfg.trainer.accelerator
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _root_cause(exc: BaseException) -> BaseException:
    """Hydra wraps constructor errors; the user wants the constructor's own message."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def open_study(setup: Setup) -> optuna.Study:
    """Create the study or join it; make sure its first trial is the dense model.

    A study joined with other model, data, space, task or pretraining keys than it was made
    with refuses before anything is written (`identity`)."""
    from hydra.utils import instantiate

    cfg = setup.cfg
    storage = instantiate(cfg.storage)
    joined = next((s for s in storage.get_all_studies() if s.study_name == cfg.name), None)
    added: list[str] = []
    if joined is not None:  # before anything is written to it
        stored = joined.user_attrs.get(identity.ATTR)
        added = identity.check(stored, identity.made_with(cfg), f"study {cfg.name!r}")
    study = create_study_with_retry(
        storage=storage,
        study_name=cfg.name,
        directions=setup.directions,
        sampler=make_sampler(cfg),
        load_if_exists=True,
    )
    if study.metric_names is None:
        study.set_metric_names(setup.metric_names)
        record.set_quality_metric(study, setup.metric)
    elif _keys(study.metric_names) != _keys(setup.metric_names):  # older names are the same
        raise ConfigError(
            "objectives",
            f"study {cfg.name!r} was created with {study.metric_names}; "
            "use another name= for other objectives",
        )
    try:
        record.mark_schema(study)
    except ValueError as exc:
        raise ConfigError("name", str(exc)) from None
    identity.remember(study, cfg, added)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(setup.space.dense_params(), skip_if_exists=True)
        record.set_dense_params(study, setup.dense_params)
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


def _keys(names) -> list[str]:
    return [objectives.key_of(n) or n for n in names]


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    """The configured sampler (it is seeded again for each trial, see `seed_for`)."""
    from hydra.utils import instantiate

    return instantiate(dict(cfg.sampler))


def seed_for(cfg: Config, number: int) -> int | None:
    """The sampler seed of trial `number`: derived from `sampler.seed` and the trial's number,
    which Optuna makes unique across every process of a study. So two commands started together
    do not propose the same plans, a continued study does not repeat its first run's proposals,
    and a study's history is reproducible (None: the sampler is not seeded)."""
    base = cfg.sampler.get("seed")
    if base is None:
        return None
    return (int(base) * 1_000_003 + 7919 * (number + 1)) % 2**32
