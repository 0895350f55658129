"""Probing a bond of a trained trial (`python -m tnsearch.bonds trial=N layer=NAME bond=K`).

The trial's trained model runs over the first ``examples`` validation examples of the study's
data; a hook on layer ``NAME`` records, for each input it receives, the activation of every index
of bond ``K`` (``tnsearch.bonds.probe``: the norm of the part of the layer's output that flows
through the index, in the bond's canonical basis, index 0 the strongest). For a classifier the
activations are averaged per class (which classes excite each index most); for text per input
token at the layer's positions (which tokens). The result is a small table (markdown) and a
figure, written to ``${root}/${name}/probe/trial-<n>/`` and logged to the trial's MLflow run
(``probe/``).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch import bonds, tn
from tnsearch import plan as plans
from tnsearch.budget import calibration
from tnsearch.config import Config, ConfigError, ProbeConfig
from tnsearch.files import atomic_path, write_text
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui import Console

__all__ = ["BondProbe", "IndexRow", "probe_command", "probe_trial"]

#: A token needs this many occurrences to be listed (when enough tokens have them).
MIN_COUNT = 2


@dataclass(frozen=True)
class IndexRow:
    """One index of the bond: its share of the energy, mean activation, and what excites it
    most: ``(label, mean activation, occurrences)``, the largest first."""

    index: int
    share: float
    mean: float
    top: tuple[tuple[str, float, int], ...]


@dataclass
class BondProbe:
    """What a bond of a trial's layer carries on the validation examples."""

    trial: int
    layer: str
    bond: int
    modes: tuple[str, ...]
    kind: str  # "classes" or "tokens"
    examples: int
    rows: list[IndexRow]
    by_label: dict[str, list[float]] = field(default_factory=dict)  # label -> mean per index
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        """The probe as a markdown table, one row per index."""
        what = "classes" if self.kind == "classes" else "tokens"
        lines = [
            f"| index | energy share | mean activation | top {what} (mean activation) |",
            "|---|---|---|---|",
        ]
        for r in self.rows:
            top = ", ".join(
                f"{_md(label)} ({value:.3g})" + (f" x{count}" if self.kind == "tokens" else "")
                for label, value, count in r.top
            )
            lines.append(f"| {r.index} | {r.share:.3f} | {r.mean:.3g} | {top} |")
        return "\n".join(lines)

    def title(self) -> str:
        side = " ".join(self.modes) or "components"
        return (
            f"trial {self.trial}, layer {self.layer}, bond {self.bond} ({side}): "
            f"{len(self.rows)} indices on {self.examples} validation examples"
        )


def _md(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "/") + "`"


def _trial(study, spec: Any) -> Record:
    """The trained trial ``spec`` names; ``trial: ...`` with the valid choices otherwise."""
    from tnsearch.results.selection import select

    valid = [r.number for r in record.trained(study) if r.layers]
    choices = ", ".join(map(str, valid)) or "none yet"
    try:
        found = select(study, spec)
    except ConfigError as exc:
        raise ConfigError("trial", f"{exc.reason}; trained tensorized trials: {choices}") from None
    if not found.layers:
        raise ConfigError(
            "trial", f"trial {found.number} is dense; trained tensorized trials: {choices}"
        )
    return found


def load_trial(cfg: Config, trial: Record) -> nn.Module:
    """The trial's trained model (CPU, eval mode, tensorized layers' paths frozen)."""
    path = cfg.study_dir / "trials" / str(trial.number) / "weights.pt"
    if not path.is_file():
        raise ConfigError("trial", f"trial {trial.number} has no trained weights at {path}")
    model = plans.build(trial.plan, trusted=plans.trusted_models(cfg.model))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    for m in model.modules():
        if isinstance(m, tn.TNLayer):
            m.freeze()
    return model.eval()


def check_layer(model: nn.Module, trial: int, name: Any, bond: Any) -> tn.TNLayer:
    """Layer ``name``'s tensorized layer and a valid ``bond``, or ``layer: ...`` / ``bond: ...``
    naming the valid choices."""
    found = bonds.tensorized_layers(model)
    choices = ", ".join(found) or "none"
    name = str(name)
    if name not in found:
        known = {n for n, _ in model.named_modules() if n}
        why = "is not tensorized in" if name in known else "is no layer of"
        raise ConfigError("layer", f"{name!r} {why} trial {trial}; tensorized layers: {choices}")
    layer = found[name]
    count = len(layer.rank)
    if count == 0:
        raise ConfigError("bond", f"layer {name!r} of trial {trial} has no bonds")
    if isinstance(bond, bool) or not isinstance(bond, int) or not 0 <= bond < count:
        raise ConfigError(
            "bond", f"layer {name!r} of trial {trial} has bonds 0-{count - 1}, got {bond!r}"
        )
    return layer


def _summary(
    acts: list[torch.Tensor], labels: list[torch.Tensor], names: Sequence[str], top: int
) -> tuple[list[tuple[float, list[tuple[str, float, int]]]], dict[str, list[float]]]:
    """Per index: the mean activation and the ``top`` labels by mean activation."""
    a = torch.cat([x.reshape(-1, x.shape[-1]) for x in acts])  # (rows, K)
    y = torch.cat([t.reshape(-1) for t in labels])  # (rows,) label per row, -1: not counted
    keep = y >= 0
    a, y = a[keep], y[keep]
    ids, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(ids), a.shape[1], dtype=a.dtype).index_add_(0, inverse, a)
    means = sums / counts[:, None]  # (labels, K)
    enough = counts >= MIN_COUNT
    pool = enough if int(enough.sum()) >= top else torch.ones_like(enough)
    out = []
    for k in range(a.shape[1]):
        score = torch.where(pool, means[:, k], torch.full_like(means[:, k], -math.inf))
        best = score.argsort(descending=True)[:top]
        out.append(
            (
                float(a[:, k].mean()),
                [(names[int(ids[i])], float(means[i, k]), int(counts[i])) for i in best],
            )
        )
    by_label = {names[int(i)]: means[j].tolist() for j, i in enumerate(ids)}
    return out, by_label


def probe_trial(cfg: ProbeConfig, console: Console | None = None) -> BondProbe:
    """Probe bond ``cfg.bond`` of layer ``cfg.layer`` of trial ``cfg.trial`` (see the
    module docstring); write the table and figure and log them to the trial's run.

    Raises:
        ConfigError: ``name: ...`` (no such study), ``trial: ...`` (not a trained tensorized
            trial), ``layer: ...``, ``bond: ...``, ``examples: ...``, naming the valid choices.
    """
    from hydra.utils import instantiate

    from tnsearch.results.selection import open_existing

    console = console or Console()
    start = time.perf_counter()
    examples = cfg.examples
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ConfigError("examples", f"must be a positive integer, got {examples!r}")
    study = open_existing(cfg.storage, cfg.name)
    trial = _trial(study, cfg.trial)
    model = load_trial(cfg, trial)
    name, bond = str(cfg.layer), cfg.bond
    check_layer(model, trial.number, name, bond)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("validate")
    batches = calibration.batches(datamodule.val_dataloader(), examples, inputs_only=False)
    text = isinstance(batches[0], Mapping)

    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                calibration.call(model, calibration.inputs_of(batch))

    terms, found = bonds.probe(model, name, bond, run)
    components = bonds.method(bonds.tensorized_layers(model)[name]).kind == "component norms"
    if text:
        tokenizer = datamodule.hf_tokenizer
        labels = [
            torch.where(b["attention_mask"].bool(), b["input_ids"], -1).reshape(-1) for b in batches
        ]
        acts = [a.reshape(-1, a.shape[-1]) for a in found]
        vocab = int(torch.cat(labels).max()) + 1
        names = tokenizer.convert_ids_to_tokens(list(range(vocab)))
    else:
        labels = [b[1] for b in batches]
        acts = [a.reshape(a.shape[0], -1, a.shape[-1]).square().mean(1).sqrt() for a in found]
        names = [str(c) for c in range(int(torch.cat(labels).max()) + 1)]
    per_index, by_label = _summary(acts, labels, names, int(cfg.top))
    share = (terms.weights.square() / terms.weights.square().sum()).tolist()
    rows = [IndexRow(k, share[k], mean, tuple(top)) for k, (mean, top) in enumerate(per_index)]
    result = BondProbe(
        trial.number,
        name,
        bond,
        () if components else terms.side,
        "tokens" if text else "classes",
        sum(len(a) for a in found) if not text else sum(len(b["input_ids"]) for b in batches),
        rows,
        by_label if not text else {},
    )
    result.seconds = time.perf_counter() - start
    out = Path(cfg.out or cfg.study_dir / "probe" / f"trial-{trial.number}")
    stem = f"{name}-bond{bond}"
    with atomic_path(out / f"{stem}.png") as tmp:
        tmp.write_bytes(figure(result))
    result.files = [
        write_text(out / f"{stem}.md", f"# {result.title()}\n\n{result.table()}\n"),
        out / f"{stem}.png",
    ]
    _log(cfg, trial, result.files, console)
    return result


def _log(cfg: Config, trial: Record, files: list[Path], console: Console) -> None:
    """Attach the files to the trial's MLflow run (`probe/`), when it has one."""
    uri = str(cfg.tracking.uri or "")
    if not (cfg.tracking.enabled and uri) or trial.mlflow_run_id is None:
        return
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for file in files:
        client.log_artifact(trial.mlflow_run_id, str(file), "probe")
    console.say(f"logged to MLflow run {trial.mlflow_run_id} (probe/)")


def figure(result: BondProbe) -> bytes:
    """Classes: mean activation per class and index, each index scaled to its largest class.
    Tokens: for the first indices, the tokens that excite them most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.kind == "classes":
        labels = list(result.by_label)
        m = torch.tensor([result.by_label[c] for c in labels]).T  # (K, classes)
        m = m / m.max(dim=1, keepdim=True).values.clamp(min=1e-300)
        fig, ax = plt.subplots(
            figsize=(max(6.0, 1.6 + 0.45 * len(labels)), max(2.6, 1.5 + 0.28 * len(result.rows))),
            constrained_layout=True,
        )
        image = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(len(result.rows)), [str(r.index) for r in result.rows], fontsize=7)
        ax.set_xlabel("class")
        ax.set_ylabel("bond index (0: strongest)")
        fig.colorbar(image, ax=ax, label="mean / its row's largest")
    else:
        shown = result.rows[:8]
        cols = min(4, len(shown))
        rows = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(3.0 * cols, 2.2 * rows), constrained_layout=True, squeeze=False
        )
        for ax in axes.flat[len(shown) :]:
            ax.axis("off")
        for ax, r in zip(axes.flat, shown, strict=False):
            tokens = [t for t, _, _ in r.top][::-1]
            ax.barh(range(len(tokens)), [v for _, v, _ in r.top][::-1], color="#4c8bd6")
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
            ax.set_title(f"index {r.index} ({r.share:.1%} of the energy)", fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(result.title(), fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def probe_command(cfg: ProbeConfig, console: Console | None = None) -> BondProbe:
    """`python -m tnsearch.bonds`: probe, print the table, say where it went."""
    console = console or Console()
    result = probe_trial(cfg, console)
    console.say(result.title())
    console.say(result.table())
    console.say(
        f"written {', '.join(str(p) for p in result.files)} ({result.seconds:.1f} s in all)"
    )
    return result
