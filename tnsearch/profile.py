"""`python -m tnsearch.profile [key=value ...]`: the sensitivity profile of a study's trained
model (each eligible layer group x topology x order x rank, alone: parameters, latency ratio,
output error, zero-shot quality), cached in `${root}/${name}/profile/` and logged to MLflow."""

from __future__ import annotations

from tnsearch.cli import command, resolve


@command("config", loading="PyTorch, Lightning, Optuna and MLflow")
def main(cfg) -> None:
    """Entry point of `python -m tnsearch.profile`."""
    from tnsearch.results.compress import profile_command

    profile_command(resolve(cfg))


if __name__ == "__main__":
    main()
