"""`python -m tnsearch [key=value ...]`: run (or continue) a search. Only wiring lives here."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from tnsearch.cli import command, resolve
from tnsearch.config import Config
from tnsearch.ui import Console, error, warn


def run(cfg: DictConfig, overrides: Sequence[str] = (), *, show_status: bool | None = None) -> int:
    """Check the config, join the study, work (or start workers) until it holds its trials.

    Args:
        cfg: the composed configuration.
        overrides: the command line's overrides, handed on to local worker processes.
        show_status: draw the live status line (None: when stdout is a terminal, and only in
            the command's own process, which counts all its workers).

    Returns:
        0 when the study reached its target, 1 when a local worker failed.
    """
    from tnsearch import interrupts

    with interrupts.handled():
        return _run(resolve(cfg), overrides, show_status)


def _run(resolved: Config, overrides: Sequence[str], show_status: bool | None) -> int:
    from tnsearch.interrupts import Interrupted
    from tnsearch.results import pareto
    from tnsearch.study import liveness, loop, setup, tracking, workers

    workers.apply_placement()
    local = workers.count(resolved.workers) if resolved.worker is None else 1
    console = Console(workers.tag(resolved.worker, local))
    if local > 1 and not workers.is_spawned():
        import torch

        workers.check_fits(local, gpus=torch.cuda.device_count(), say=warn)
    ready = setup.prepare(resolved, console)  # raises ConfigError: nothing written yet
    study = setup.open_study(ready)
    # mlflow is imported and the store opened on the tracker's thread; trials wait for their runs.
    tracker = tracking.from_config(resolved.tracking, resolved.name, background=True)
    tracker.attach(study)
    status, code = "KILLED", 1
    try:
        children = []
        if local > 1:  # this process is worker 0; the others are copies of this command
            import torch

            gpus = torch.cuda.device_count()
            children = workers.spawn(overrides, local, gpus=gpus)
            workers.place_self(local, gpus=gpus)
        try:
            loop.work(
                ready, study, tracker, show_status=False if workers.is_spawned() else show_status
            )
        except Interrupted as exc:
            workers.stop(children, exc.signum)
            raise
        except loop.StudyStopped:
            status = "FAILED"
            raise
        finally:
            code = int(any(workers.wait(children)))
        status = "FINISHED" if code == 0 else "FAILED"
    finally:
        if not workers.is_spawned():
            liveness.reap(study, tracker, retries=resolved.retries)
            names = list(study.metric_names or resolved.objectives)
            pareto.finish(study, ready.study_dir, names, tracker, console)
            tell_parent(study, resolved, names, tracker)
            if loop.running(study) == 0:  # other jobs of an array may still be at work
                tracker.finish_parent(status)
        tracker.close()  # every queued MLflow call is made before the command ends
        if not workers.is_spawned():
            log_models(study, resolved, ready, console)
            console.say(next_steps(resolved, overrides, tracker.experiment_id))
    return code


def tell_parent(study, cfg: Config, names: Sequence[str], tracker) -> None:
    """The study's figures, search space and front on its MLflow parent run."""
    from tnsearch.results import summary

    tracker.log_parent(
        params=summary.params(cfg),
        metrics=summary.metrics(study),
        description=summary.description(study, names),
    )


def log_models(study, cfg: Config, ready, console) -> None:
    """The chosen trials' models to their MLflow runs (`tracking.log_models`), registered when
    `tracking.register` says (tnsearch.results.mlflow_models)."""
    if not cfg.tracking.enabled:
        return
    from tnsearch.results import mlflow_models

    mlflow_models.log_models(study, cfg, ready.study_dir, ready.datamodule, console)


#: Overrides that concern only the search, not which study it is (left out of the next commands).
_SEARCH_ONLY = ("trials", "epochs", "workers", "worker", "timeout", "retries", "hydra.searchpath")


def next_steps(cfg: Config, overrides: Sequence[str], experiment_id: str | None) -> str:
    """Where to look next: the MLflow runs view (in its "Model training" view, not the GenAI
    overview MLflow 3 opens by default), the report, the export and optuna-dashboard, with the
    command line's own keys (so a study of your own model is found with its model)."""
    import shlex

    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in _SEARCH_ONLY]
    kept = kept or [f"root={cfg.root}", f"name={cfg.name}"]
    keys = " ".join(map(shlex.quote, kept))  # a path with spaces stays one argument
    lines = ["", "Next:"]
    if experiment_id is not None:
        uri = cfg.tracking.uri
        lines.append(f"  mlflow ui --backend-store-uri {shlex.quote(str(uri))}")
        lines.append(
            f"    then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
            "?workflowType=machine_learning&viewStateShareKey=tnsearch"
        )
    lines.append(f"  python -m tnsearch.report {keys}")
    lines.append(f"  python -m tnsearch.export {keys} trial=best-accuracy")
    journal = cfg.storage.get("path")
    if journal:
        lines.append(f"  optuna-dashboard {shlex.quote(str(journal))}")
    return "\n".join(lines)


@command("config", loading="PyTorch, Lightning, Optuna and MLflow")
def main(cfg: DictConfig) -> int:
    """Console-script entry point (`tnsearch ...`, `python -m tnsearch ...`)."""
    from hydra.core.hydra_config import HydraConfig

    from tnsearch.interrupts import Interrupted
    from tnsearch.study.loop import StudyStopped

    hydra = HydraConfig.get()
    # Local workers are copies of this command: they need the user's config folders too.
    extra = [
        f"{source.schema}://{source.path}"
        for source in hydra.runtime.config_sources
        if source.provider not in ("hydra", "main", "schema")
    ]
    overrides = list(hydra.overrides.task)
    if extra:
        overrides.append(f"hydra.searchpath=[{','.join(extra)}]")
    try:
        return run(cfg, overrides)
    except Interrupted as exc:
        error(f"interrupted: {exc.name}; running trials were recorded as failed (rerun to go on)")
        return exc.exit_code
    except KeyboardInterrupt:
        error("interrupted: running trials were recorded as failed (rerun to go on)")
        return 130
    except StudyStopped as exc:
        error(f"stopped: {exc}")
        return 1


if __name__ == "__main__":
    main()
