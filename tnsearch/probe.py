"""`python -m tnsearch.bonds trial=N layer=NAME bond=K [key=value ...]`: probe a bond of a trained
trial (see `tnsearch.results.probe`).

The command lives here, among the commands, because `tnsearch.bonds` is pure PyTorch (no Hydra):
`tnsearch/bonds/__main__.py` only hands over to `main` (the one import the layering contracts
allow it, pyproject.toml), so that the user types the name of what is probed.
"""

from __future__ import annotations

from tnsearch.cli import command, resolve
from tnsearch.export import quote_trial


def _probe(cfg) -> None:
    from tnsearch.results.probe import probe_command

    probe_command(resolve(cfg))


_probe.__module__ = "tnsearch.bonds"  # the command's first line names it as the user typed it
main = command("probe", argv=quote_trial)(_probe)


if __name__ == "__main__":
    main()
