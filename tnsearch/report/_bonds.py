"""The report's bond section: the spectra of the Pareto-optimal trials' tensorized layers, and
what truncating every bond to its effective rank (`tnsearch.truncate`) does to size and accuracy;
for the most accurate of them, accuracy and parameters against the energy kept (0.9 to 0.9999).

The trials' trained weights are read from ``${root}/${name}/trials/<n>/weights.pt`` into
`tnsearch.plan.build(plan)`; accuracy is measured on the validation split of the study's data
(CPU, eval mode). Options (``report.bonds``, all optional): ``max_trials`` (5, the smallest
Pareto-optimal trials), ``energy`` (0.99), ``energies`` (`ENERGIES`, the truncation curve's).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tnsearch import plan as plans
from tnsearch.config import Config
from tnsearch.report import _figures
from tnsearch.report._data import ReportData
from tnsearch.report._html import esc, note, png, table
from tnsearch.study.record import Record

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tnsearch.bonds import LayerBonds


#: The energies of the truncation curve.
ENERGIES = (0.9, 0.95, 0.99, 0.995, 0.999, 0.9999)


@dataclass
class TrialBonds:
    """One trial's bonds and its truncation (accuracies None when the data is unavailable)."""

    trial: Record
    found: dict[str, LayerBonds]
    truncated_rank: dict[str, tuple[int, ...]]
    params: int
    params_after: int
    accuracy: float | None = None
    accuracy_after: float | None = None


def weights_path(cfg: Config, trial: Record) -> Path:
    """Where the study keeps ``trial``'s trained weights."""
    return cfg.study_dir / "trials" / str(trial.number) / "weights.pt"


def load_model(trial: Record, path: Path, trusted: Collection[str] = ()) -> nn.Module:
    """The trial's trained model, on the CPU, in eval mode, tensorized layers' paths frozen."""
    import torch

    model = plans.build(trial.plan, trusted=trusted)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _frozen(model.eval())


def _frozen(model: nn.Module) -> nn.Module:
    from tnsearch import tn

    for layer in model.modules():
        if isinstance(layer, tn.TNLayer):
            layer.freeze()  # no path measurements: the fewest-MAC path
    return model


def validation_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The study's normalized validation split ``(N, C, S, S), (N,)``, or why not."""
    if not cfg.data:
        return "the configuration has no data node"
    try:
        from hydra.utils import instantiate

        datamodule = instantiate(cfg.data, _convert_="all")
        return datamodule.tensors("val")
    except Exception as exc:  # noqa: BLE001 - missing files, no network: say so, go on
        return f"{type(exc).__name__}: {exc}"


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    import torch

    correct = 0
    with torch.no_grad():
        for k in range(0, len(y), batch):
            correct += int((model(x[k : k + batch]).argmax(-1) == y[k : k + batch]).sum())
    return correct / max(len(y), 1)


def study_bonds(
    trial: Record, path: Path, energy: float, data: tuple | None, trusted: Collection[str] = ()
) -> TrialBonds:
    """Analyze and truncate one trial's model (and measure both, given the data)."""
    from tnsearch import bonds, tn

    model = load_model(trial, path, trusted)
    small = _frozen(bonds.truncate(model, energy=energy))
    found = bonds.analyze(model, energy=energy)
    ranks = {name: small.get_submodule(name).rank for name in found}
    out = TrialBonds(trial, found, ranks, tn.n_params(model), tn.n_params(small))
    if data is not None:
        out.accuracy = accuracy(model, *data)
        out.accuracy_after = accuracy(small, *data)
    return out


@dataclass(frozen=True)
class CurvePoint:
    """The model truncated at one energy: its parameters and accuracy (None without data)."""

    energy: float
    params: int
    accuracy: float | None


def truncation_curve(
    trial: Record,
    path: Path,
    energies: Collection[float],
    data: tuple | None,
    trusted: Collection[str] = (),
) -> tuple[CurvePoint, list[CurvePoint]]:
    """The trial's model as trained (energy 1.0: nothing cut) and truncated at each energy."""
    from tnsearch import bonds, tn

    model = load_model(trial, path, trusted)

    def point(energy: float, m: nn.Module) -> CurvePoint:
        return CurvePoint(energy, tn.n_params(m), None if data is None else accuracy(m, *data))

    full = point(1.0, model)
    cut = [point(e, _frozen(bonds.truncate(model, energy=e))) for e in sorted(energies)]
    return full, cut


def curve_png(trial: Record, full: CurvePoint, cut: list[CurvePoint]) -> bytes:
    """Accuracy (left) and parameters (right) against the energy kept, on a log scale of the
    energy left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4), constrained_layout=True)
    lost = [1 - p.energy for p in cut]
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xticks(lost, [f"{p.energy:g}" for p in cut], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("energy kept per bond")
    if full.accuracy is not None:
        ax.plot(lost, [p.accuracy for p in cut], "o-", color="#1f77b4", label="val accuracy")
        ax.axhline(full.accuracy, color="#1f77b4", lw=0.8, ls="--", label="as trained")
        ax.set_ylabel("validation accuracy", color="#1f77b4")
    right = ax.twinx()
    right.plot(lost, [p.params for p in cut], "s-", color="#d62728", label="parameters")
    right.axhline(full.params, color="#d62728", lw=0.8, ls="--")
    right.set_ylabel("parameters", color="#d62728")
    ax.grid(alpha=0.3)
    ax.set_title(f"trial {trial.number}: truncation at each energy, no retraining", fontsize=10)
    return _figures._png(fig)


def curve_table(full: CurvePoint, cut: list[CurvePoint]) -> str:
    rows = [
        [
            esc(f"{p.energy:g}") if p is not full else "1 (as trained)",
            f"{p.params:,}",
            f"{1 - p.params / max(full.params, 1):.1%}",
            _acc(p.accuracy),
            "-"
            if p.accuracy is None or full.accuracy is None
            else f"{p.accuracy - full.accuracy:+.4f}",
        ]
        for p in [full, *cut]
    ]
    header = ["energy kept", "params", "params saved", "val acc", "change"]
    return table(header, rows, numeric=range(1, 5))


def spectra_png(result: TrialBonds, energy: float) -> bytes:
    """One panel per tensorized layer: each bond's normalized singular values (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers = list(result.found.values())
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 2.7 * rows), constrained_layout=True, squeeze=False
    )
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, layers, strict=False):
        ax.set_title(_figures.fit_title(f"{layer.name} ({layer.topology})", 3.6, 9), fontsize=9)
        if not layer.bonds:
            ax.axis("off")
            ax.text(0.5, 0.5, "no bonds", ha="center", va="center", transform=ax.transAxes)
            continue
        low = 1.0
        for bond in layer.bonds:
            s = [max(v, 1e-12) for v in bond.singular_values]
            label = bond.label if layer.kind == "singular values" else "components"
            (line,) = ax.plot(range(1, len(s) + 1), s, lw=1.2, label=label)
            k = bond.effective_rank
            ax.plot([k], [s[k - 1]], "o", ms=4, color=line.get_color())
            low = min(low, s[-1])
        ax.set_yscale("log")
        ax.set_ylim(max(low / 2, 1e-12), 1.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(which="both", labelsize=7)
        ax.set_xlabel("index (1: largest)", fontsize=7)
        ax.set_ylabel("singular value / largest", fontsize=7)
        ax.grid(alpha=0.3)
        if len(layer.bonds) <= 8:
            ax.legend(fontsize=6, loc="lower left")
    title = (
        f"trial {result.trial.number}: normalized singular values per bond "
        f"(dot: effective rank at {energy:.0%} energy)"
    )
    fig.suptitle(_figures.fit_title(title, 3.6 * cols), fontsize=10)
    return _figures._png(fig)


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def truncation_table(results: list[TrialBonds], energy: float) -> str:
    """Size and accuracy before and after truncation, one row per trial."""
    rows = []
    for r in results:
        change = (
            "-"
            if r.accuracy is None or r.accuracy_after is None
            else f"{r.accuracy_after - r.accuracy:+.4f}"
        )
        rows.append(
            [
                esc(r.trial.number),
                esc(plans.summary(r.trial.plan)),
                f"{r.params:,}",
                f"{r.params_after:,}",
                f"{r.params / max(r.params_after, 1):.2f}x",
                _acc(r.trial.quality),
                _acc(r.accuracy),
                _acc(r.accuracy_after),
                change,
            ]
        )
    header = ["trial", "plan", "params", f"params at {energy:.0%}", "smaller", "val acc (study)"]
    header += ["val acc", "val acc truncated", "change"]
    return table(header, rows, numeric=range(2, 9))


def bond_table(result: TrialBonds) -> str:
    """Every bond of one trial: size, numerical and effective rank, entropy, size after."""
    rows = []
    for name, layer in result.found.items():
        after = result.truncated_rank[name]
        for bond in layer.bonds:
            rows.append(
                [
                    esc(name),
                    esc(layer.topology),
                    esc(bond.label if layer.kind == "singular values" else "components"),
                    esc(bond.size),
                    esc(bond.rank),
                    esc(bond.effective_rank),
                    f"{bond.entropy:.3f}",
                    esc(after[bond.position]),
                ]
            )
        if not layer.bonds:
            rows.append([esc(name), esc(layer.topology), "no bonds", *["-"] * 5])
    header = ["layer", "topology", "bond (modes on one side)", "size", "rank", "effective rank"]
    return table([*header, "entropy (nats)", "size after"], rows, numeric=range(3, 8))


def render(data: ReportData) -> str:
    """The bond section (see the module docstring)."""
    options = data.options.bonds
    limit, energy = int(options.get("max_trials", 5)), float(options.get("energy", 0.99))
    if not data.front:
        return note("No Pareto-optimal trial yet.")
    dense = [t.number for t in data.front if t.is_dense]
    parts = [
        note(
            "Every bond of the tensorized layers of the smallest Pareto-optimal trials, in "
            "canonical form: the singular values of the weight matricized across the bond "
            "(MPO, tree; Tucker: per mode, HOSVD), normalized so their squares sum to 1; CP: "
            "the norms of its components, normalized the same way. The effective rank keeps "
            f"{energy:.0%} of that energy; the entropy is -&sum; p ln p of the squares (nats). "
            f"<i>Truncated</i> cuts every bond to its effective rank "
            f"(<code>tnsearch.truncate(model, energy={energy})</code>), with no retraining."
        )
    ]
    if dense:
        parts.append(note(f"Dense, so without bonds: trial {', '.join(map(str, dense))}."))
    best = data.tensorized_front
    if not best:
        return "\n".join(parts + [note("No Pareto-optimal trial tensorizes a layer yet.")])
    if len(best) > limit:
        parts.append(note(f"The {limit} smallest of {len(best)} tensorized trials are shown."))
    missing, ready = [], []
    for trial in best[:limit]:
        path = weights_path(data.cfg, trial)
        (ready if path.is_file() else missing).append((trial, path))
    if missing:
        numbers = ", ".join(str(t.number) for t, _ in missing)
        parts.append(note(f"No trained weights found for trial {esc(numbers)}."))
    if not ready:
        return "\n".join(parts)
    val = validation_data(data.cfg)
    if isinstance(val, str):
        parts.append(note(f"Accuracies left out: the validation data is unavailable ({esc(val)})."))
    trusted = plans.trusted_models(data.cfg.model)
    results = [
        study_bonds(t, p, energy, None if isinstance(val, str) else val, trusted) for t, p in ready
    ]
    parts.append(truncation_table(results, energy))
    top = max(ready, key=lambda tp: (tp[0].quality or 0.0, -tp[0].number))
    energies = [float(e) for e in options.get("energies", ENERGIES)]
    full, cut = truncation_curve(
        top[0], top[1], energies, None if isinstance(val, str) else val, trusted
    )
    parts.append(f"<h3>Truncation you can trust: trial {top[0].number}</h3>")
    parts.append(
        note(
            "The most accurate of these trials truncated at each energy (every bond cut to the "
            "fewest singular values keeping that share of its energy; CP: its components), "
            "measured on the validation split without retraining, next to the parameters it "
            "saves."
        )
    )
    parts.append(png(curve_png(top[0], full, cut), "accuracy against the energy kept"))
    parts.append(curve_table(full, cut))
    for result in results:
        parts.append(f"<h3>Trial {result.trial.number}</h3>")
        if not result.found:
            parts.append(note("No MPO, tree, Tucker or CP layer: nothing to analyze."))
            continue
        alt = f"bond spectra of trial {result.trial.number}"
        parts.append(png(spectra_png(result, energy), alt))
        parts.append(f"<details><summary>bonds</summary>{bond_table(result)}</details>")
    return "\n".join(parts)
