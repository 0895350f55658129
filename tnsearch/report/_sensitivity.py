"""The report's sensitivity-profile section: what each layer group loses, alone, per parameter
saved (the profile `python -m tnsearch.profile` or a warm study measured)."""

from __future__ import annotations

from pathlib import Path

from tnsearch.budget.profile import Profile
from tnsearch.report._data import ReportData
from tnsearch.report._html import esc, note, png


def newest(data: ReportData) -> Profile | None:
    """The study folder's most recent profile, if any."""
    folder = Path(data.cfg.root) / data.name / "profile"
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            return Profile.load(path)
        except (ValueError, KeyError, TypeError, OSError):
            continue  # damaged, or from another version: the next newest
    return None


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The options no other beats on both counts (fewer parameters and less loss), by size."""
    best, out = float("inf"), []
    for x, y in sorted(points):
        if y < best:
            best = y
            out.append((x, y))
    return out


def curves_png(found: Profile) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tnsearch.report._figures import _png

    fig, ax = plt.subplots(figsize=(8, 4.6), constrained_layout=True)
    sign = 1.0 if found.maximize else -1.0
    for group, g in found.groups.items():
        points = [
            (e.params / g.params, sign * (found.dense_quality - e.quality))
            for e in found.options(group)
            if e.measured
        ]
        guessed = [
            (e.params / g.params, sign * (found.dense_quality - e.quality))
            for e in found.options(group)
            if not e.measured
        ]
        if not points and not guessed:
            continue
        line = ax.plot([], [], marker="o", ms=3, label=group)[0]
        if points:
            line.set_data(*zip(*envelope(points), strict=True))
            ax.scatter(*zip(*points, strict=True), s=8, alpha=0.5, color=line.get_color())
        if guessed:  # predicted from the spectra, not measured: hollow
            ax.scatter(*zip(*guessed, strict=True), s=8, alpha=0.3, facecolors="none",
                       edgecolors=line.get_color(), linewidths=0.6)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parameters kept (fraction of the group's dense parameters)")
    ax.set_ylabel(f"zero-shot {found.metric} lost (alone)")
    ax.axhline(0, color="#888", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, title="group")
    ax.set_title(
        f"sensitivity profile: {len(found.entries)} options ({len(found.measured)} measured, "
        f"hollow: predicted), {len(found.groups)} groups"
    )
    return _png(fig)


def render(data: ReportData) -> str:
    found = newest(data)
    if found is None:
        return note(
            "No profile yet: <code>python -m tnsearch.profile</code> (or a warm study with "
            "<code>search.budgets</code>) measures one."
        )
    return png(curves_png(found), "sensitivity profile") + note(
        f"Each group tensorized alone, every option of the space: {len(found.measured)} "
        "decomposed to fit their inputs and scored without training (filled), the others "
        "predicted from the spectra of the whitened weights (hollow) "
        f"(dense {esc(found.metric)} {found.dense_quality:.4f}); "
        "the line joins the measured options that lose least for their size. Budget plans "
        "(<code>python -m tnsearch.compress</code>, <code>search.budgets</code>) are allocated "
        f"from these points. Profile {esc(found.key)}, measured in {found.seconds:.0f} s."
    )
