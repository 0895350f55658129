"""Is the exported model the timed model? A Tucker-2 ResNet-20 in torch and in onnxruntime.

The model is the resnet study's (``tnsearch.models.ResNet``, depth 20, CIFAR: 3x32x32, 10
classes) with its 3x3 block convolutions ``layer*.*.conv*`` in Tucker-2 form (``topology=tucker,
order=1``), ranks ``round(--rank-fraction * channels)``: at least 3x fewer parameters. Weights are
random (timing does not depend on them). Batch ``--batch`` (64, the latency batch).

Two measurements, each paired with the dense ResNet-20 on the same inputs (A B B A ..., median
of the per-pair ratios, so that load on the machine cancels out):

- torch eager: ``latency.paired`` (the layers' paths chosen by ``tn.freeze_paths`` first);
- onnxruntime: both models exported by ``tnsearch.measure.onnx.export`` (the graph follows each
  layer's chosen path), each in a CPU session with torch's threads, ``latency.paired_calls``.

Target (issue 15): a model that torch measures at <= 0.8x dense runs its ONNX in onnxruntime at
<= 1.0x the dense ONNX. ``--reconstruct`` adds the ONNX export as it was before (every layer on the
``reconstruct`` path). Prints a markdown table, writes nothing: copy it into bench/RESULTS.md.

    python bench/onnx.py [--batch 64] [--pairs 30] [--rank-fraction 0.375] [--reconstruct]
"""

from __future__ import annotations

import argparse
import collections
import copy
import fnmatch
import os
import sys
import tempfile
from pathlib import Path

# `python bench/onnx.py` puts bench/ first on the path: this file would shadow the onnx package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import onnx  # noqa: E402
import torch  # noqa: E402

from tnsearch import tn  # noqa: E402
from tnsearch.measure import latency  # noqa: E402
from tnsearch.measure import onnx as onnx_export  # noqa: E402
from tnsearch.models import ResNet  # noqa: E402

LAYERS = "layer*.*.conv*"  # the 3x3 convolutions of the residual blocks
TORCH_TARGET, ONNX_TARGET = 0.8, 1.0


def tucker2(dense: torch.nn.Module, fraction: float) -> torch.nn.Module:
    """`dense` with its block convolutions in Tucker-2 form, rank `fraction` of the channels."""
    model = copy.deepcopy(dense)
    for name, module in list(model.named_modules()):
        if fnmatch.fnmatchcase(name, LAYERS):
            ranks = (round(fraction * module.out_channels), round(fraction * module.in_channels))
            layer = tn.tensorize(module, topology="tucker", order=1, rank=ranks, init="random")
            model.set_submodule(name, layer)
    return model


def nodes(path: Path) -> int:
    return len(onnx.load(str(path)).graph.node)


def row(what: str, stats: latency.PairedStats, target: float | None, note: str = "") -> str:
    goal = "-" if target is None else f"<= {target:.1f}x"
    met = "-" if target is None else "yes" if stats.ratio <= target else "no"
    noisy = ", noisy" if stats.noisy else ""
    return (
        f"| {what} | {stats.latency_ms:.2f} | {stats.reference_ms:.2f} | {stats.ratio:.2f}x "
        f"({stats.ratio_p10:.2f}-{stats.ratio_p90:.2f}{noisy}) | {goal} | {met} | {note} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--rank-fraction", type=float, default=0.375)
    parser.add_argument("--reconstruct", action="store_true", help="also the old export")
    opts = parser.parse_args()

    torch.manual_seed(0)
    dense = ResNet(depth=20, in_channels=3, image_size=32, num_classes=10).eval()
    model = tucker2(dense, opts.rank_fraction).eval()
    smaller = tn.n_params(dense) / tn.n_params(model)
    example = torch.randn(opts.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())

    tn.freeze_paths(model, example, grad=False)
    eager = latency.paired(model, dense, example, repeats=opts.pairs)
    rows = [row("torch eager (`latency.paired`)", eager, TORCH_TARGET)]
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.onnx" for name in ("model", "dense", "old")}
        exported = onnx_export.export(model, example, files["model"])
        onnx_export.export(dense, example, files["dense"], check=False)
        ort = onnx_export.paired(files["model"], files["dense"], example, repeats=opts.pairs)
        counts = f"{nodes(files['model'])} vs {nodes(files['dense'])} nodes"
        rows.append(row("onnxruntime (`latency.paired_calls`)", ort, ONNX_TARGET, counts))
        if opts.reconstruct:
            old = copy.deepcopy(model)
            for layer in old.modules():
                if isinstance(layer, tn.TNLayer):
                    layer.path = "reconstruct"
            onnx_export.export(old, example, files["old"], check=False)
            before = onnx_export.paired(files["old"], files["dense"], example, repeats=opts.pairs)
            note = f"{nodes(files['old'])} nodes"
            rows.append(row("onnxruntime, all `reconstruct` (the old export)", before, None, note))
    after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    paths = collections.Counter(exported.paths.values())
    print(
        f"Tucker-2 ResNet-20 (ranks {opts.rank_fraction:g} x channels, {tn.n_params(model):,} "
        f"parameters, {smaller:.2f}x fewer than dense) vs dense ResNet-20, batch {opts.batch} "
        f"x 3x32x32, {eager.device}; load average {load} before, {after} after; "
        f"{opts.pairs} pairs each"
    )
    print()
    print("| runtime | Tucker-2 ms | dense ms | ratio (p10-p90) | target | met | graph |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(
        "Paths (`tn.freeze_paths` on the batch; the ONNX graph follows them): "
        + ", ".join(f"{p} x{n}" for p, n in paths.most_common())
    )
    for name, path in exported.paths.items():
        layer = model.get_submodule(name)
        g = layer.geometry
        print(
            f"- `{name}`: {g.in_features}->{g.out_features}, stride {g.stride[0]}, "
            f"rank {layer.rank}: {path}"
        )
    if eager.ratio > TORCH_TARGET:
        print(f"\nTorch measures {eager.ratio:.2f}x (> {TORCH_TARGET}x): the target is moot.")
    else:
        met = "met" if ort.ratio <= ONNX_TARGET else "missed"
        print(f"\nTarget {met}: torch {eager.ratio:.2f}x dense, onnxruntime {ort.ratio:.2f}x.")


if __name__ == "__main__":
    main()
