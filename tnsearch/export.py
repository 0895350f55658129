"""`python -m tnsearch.export [trial=...] [out=...]`: one trial of a study as a standalone package.

The package (see `tnsearch.results.export`) needs neither the study nor its storage; read it
back with `tnsearch.load(folder)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tnsearch.cli import command, resolve


def quote_trial(argv: Sequence[str]) -> list[str]:
    """Quote the value of `trial=`: Hydra's override grammar rejects an unquoted second '=',
    so `trial=smallest-within=0.01` works as written."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "trial" and "=" in value and value[:1] not in ("'", '"'):
            arg = f"trial='{value}'"
        out.append(arg)
    return out


@command("export", argv=quote_trial)
def main(cfg) -> None:
    """Entry point of `python -m tnsearch.export`."""
    from tnsearch.results.export import export

    export(resolve(cfg))


if __name__ == "__main__":
    main()
