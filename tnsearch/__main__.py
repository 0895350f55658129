"""`python -m tnsearch [key=value ...]`: run (or continue) a search. Only wiring lives here."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from tnsearch import console
from tnsearch.config import ConfigError
from tnsearch.search import StudyStopped


def run(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Check the config, join the study, work (or start workers) until it holds its trials.

    Args:
        cfg: the composed configuration.
        overrides: the command line's overrides, handed on to local worker processes.

    Returns:
        0 when the study reached its target, 1 when a local worker failed.
    """
    from tnsearch import liveness, search, tracking, workers

    resolved = search.resolve(cfg)
    workers.apply_placement()
    setup = search.prepare(resolved)  # raises ConfigError: nothing written yet
    study = search.open_study(setup)
    tracker = tracking.from_config(resolved["tracking"], resolved["name"])
    tracker.attach(study)
    local = workers.count(resolved["workers"]) if resolved["worker"] is None else 1
    status, code = "KILLED", 1
    try:
        children = []
        if local > 1:  # this process is worker 0; the others are copies of this command
            import torch

            gpus = torch.cuda.device_count()
            children = workers.spawn(overrides, local, gpus=gpus)
            workers.place_self(local, gpus=gpus)
        try:
            search.work(setup, study, tracker)
        finally:
            code = int(any(workers.wait(children)))
        status = "FINISHED" if code == 0 else "FAILED"
    finally:
        if not workers.is_spawned():
            liveness.reap(study, tracker)
            search.finish(setup, study, tracker)
            if search.running(study) == 0:  # other jobs of an array may still be at work
                tracker.finish_parent(status)
    return code


@hydra.main(config_path="conf", config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        code = run(cfg, HydraConfig.get().overrides.task)
    except ConfigError as exc:
        console.error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        console.error("interrupted: running trials were recorded as failed")
        sys.exit(130)
    except StudyStopped as exc:
        console.error(f"stopped: {exc}")
        sys.exit(1)
    if code:
        sys.exit(code)


def main() -> None:
    """Console-script entry point (`tnsearch ...`)."""
    _hydra_main()


if __name__ == "__main__":
    main()
