"""`python -m tnsearch.compress budget.params=0.5 [key=value ...]`: compress a study's trained
model to a budget in one shot (the profile's allocation, data-aware decomposition, optional
`heal.epochs`), and write the same package as `tnsearch.export`."""

from __future__ import annotations

from tnsearch.cli import command, resolve


@command("config", loading="PyTorch, Lightning, Optuna and MLflow")
def main(cfg) -> None:
    """Entry point of `python -m tnsearch.compress`."""
    from tnsearch.results.compress import compress

    compress(resolve(cfg))


if __name__ == "__main__":
    main()
