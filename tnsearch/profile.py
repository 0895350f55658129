"""`python -m tnsearch.profile [key=value ...]`: the sensitivity profile of a study's trained
model (each eligible layer group x topology x order x rank, alone: parameters, latency ratio,
output error, zero-shot quality), cached in `${root}/${name}/profile/` and logged to MLflow."""

from __future__ import annotations

from pathlib import Path

from tnsearch.cli import command, resolve
from tnsearch.config import Config
from tnsearch.ui import Console

__all__ = ["main", "profile_command", "table"]


def profile_command(cfg: Config, console: Console | None = None) -> Path:
    """Measure (or read) the profile; print each group's best options; log it to MLflow."""
    from tnsearch.study import loop, sensitivity, tracking

    console = console or Console()
    ready = loop.trained_setup(cfg, console)
    found, path = sensitivity.profile(ready, say=console.say)
    console.say(
        f"profile of {cfg.name}: {len(found.entries)} options over {len(found.groups)} "
        f"groups in {found.seconds:.0f} s; dense {found.metric} {found.dense_quality:.4f}, "
        f"{found.dense_params:,} params, {found.dense_latency_ms:.3f} ms per batch"
    )
    console.say(table(found))
    console.say(f"written {path}")
    tracker = tracking.from_config(cfg.tracking, cfg.name)
    tracker.log_run(
        "profile",
        params={
            "profile.key": found.key,
            "options": len(found.entries),
            "measured": len(found.measured),
        },  # fmt: skip
        metrics={f"dense_{found.metric}": found.dense_quality, "seconds": found.seconds},
        files=[path],
        tags={"tnsearch.role": "profile"},
    )
    return path


def table(found, per_group: int = 3) -> str:
    """The options that lose least per byte of weights saved, per group (markdown)."""
    rows = ["| group | option | params (vs dense) | bytes (vs dense) | latency | quality | "
            "output error |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for group, g in found.groups.items():
        options = sorted(
            found.options(group),
            key=lambda e: (
                e.loss(found.dense_quality, found.maximize)
                / max(g.weight_bytes - e.weight_bytes, 1)
            ),
        )
        for e in options[:per_group]:
            rows.append(
                f"| {group} | {e.name.removeprefix(group + ' ')} | {e.params:,} "
                f"({e.params / g.params:.2f}) | {e.weight_bytes:,} "
                f"({e.weight_bytes / g.weight_bytes:.2f}) | {e.latency_ratio:.2f}x | "
                f"{e.quality:.4f}{'' if e.measured else ' (predicted)'} | {e.error:.3f} |"
            )
    return "\n".join(rows)


@command("config", loading="PyTorch, Lightning, Optuna and MLflow")
def main(cfg) -> None:
    """Entry point of `python -m tnsearch.profile`."""
    profile_command(resolve(cfg))


if __name__ == "__main__":
    main()
