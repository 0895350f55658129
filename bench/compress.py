"""One-shot compression to a budget: the profile's allocation against uniform allocations, and
data-aware decomposition against plain decomposition and whitened SVD.

For a study with trained weights (default: all-MiniLM-L6-v2, `study=minilm`), at one budget of
the dense parameters, each row builds a model without any training and scores it on the whole
validation split:

- `profile, all topologies`: `python -m tnsearch.compress`'s allocation;
- `profile, <topology>`: the allocation over that topology's options only;
- `uniform, <topology>`: every group at the same fraction of its parameters (the largest level
  that fits the budget), that topology, data-aware decomposition;
- with `--baselines` (Linear layers only): per-layer truncated SVD and whitened SVD (SVD-LLM's
  closed form) of every eligible Linear at one shared rank fraction meeting the budget.

    python bench/compress.py [study=minilm data.limit=600 budget.params=0.766 ...] [--baselines]
"""

from __future__ import annotations

import copy
import sys
import time
from datetime import datetime

import torch
from torch import nn


def uniform(found, topology: str, fraction: float):
    """Every group at the largest level <= f of its own parameters, f the largest that fits."""
    from tnsearch.budget.allocate import _fixed

    fixed = _fixed(found)[0] * found.dense_params

    def plan(level: float):
        layers, total = {}, fixed
        for group, g in found.groups.items():
            fits = [
                e
                for e in found.options(group)
                if e.topology == topology and e.params <= level * g.params
            ]
            if fits and level < 1:
                best = max(fits, key=lambda e: e.params)
                layers.update(best.layers)
                total += best.params
            else:
                total += g.params
        return layers, total

    lo, hi = 0.0, 1.0
    best = None
    for _ in range(40):
        mid = (lo + hi) / 2
        layers, total = plan(mid)
        if total <= fraction * found.dense_params:
            lo, best = mid, (layers, total)
        else:
            hi = mid
    return best


def svd_baseline(model: nn.Module, names, stats, fraction_keep: float, whiten: bool) -> int:
    """Replace each Linear's weight by its rank-r truncation (r: `fraction_keep` of its
    parameters); whitened: by the input covariance first (the optimum of the output error)."""
    saved = 0
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            continue
        out_f, in_f = module.weight.shape
        r = max(1, int(fraction_keep * out_f * in_f / (out_f + in_f)))
        w = module.weight.detach().double()
        if whiten:
            c = stats[name].covariance(centered=False)
            c = c + 1e-6 * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
            values, vectors = torch.linalg.eigh(c)
            root = vectors @ torch.diag(values.clamp(min=1e-12).sqrt()) @ vectors.T
            inv = vectors @ torch.diag(1 / values.clamp(min=1e-12).sqrt()) @ vectors.T
            u, s, vt = torch.linalg.svd(w @ root, full_matrices=False)
            approx = u[:, :r] @ torch.diag(s[:r]) @ vt[:r] @ inv
        else:
            u, s, vt = torch.linalg.svd(w, full_matrices=False)
            approx = u[:, :r] @ torch.diag(s[:r]) @ vt[:r]
        module.weight.data = approx.to(module.weight.dtype)
        saved += out_f * in_f - r * (out_f + in_f)
    return saved


def main() -> None:
    from hydra import compose, initialize_config_module

    from tnsearch.budget import allocate
    from tnsearch.cli import resolve
    from tnsearch.study import loop, sensitivity, setup
    from tnsearch.study.sensitivity import dense_model, evaluator
    from tnsearch.tn import n_params

    args = [a for a in sys.argv[1:] if a != "--baselines"]
    if not any(a.startswith("study=") for a in args):
        args = ["study=minilm", "data.limit=600", *args]
    if not any(a.startswith("budget.params=") for a in args):
        args.append("budget.params=0.766")
    with initialize_config_module("tnsearch.conf", version_base=None):
        cfg = resolve(compose("config", overrides=[*args, "tracking.enabled=false"]))
    fraction = float(cfg.budget.params)
    started = time.perf_counter()
    ready = setup.prepare(cfg)
    loop.ensure_pretrained(ready)
    found, _ = sensitivity.profile(ready, say=print)
    profiled = time.perf_counter() - started
    dense = dense_model(ready)
    total = n_params(dense)
    score = evaluator(ready, dense, examples=None)
    rows = [("dense", total, score(), 0.0)]

    def measure(label: str, layers) -> None:
        t = time.perf_counter()
        model, _ = sensitivity.build(ready, layers)
        built = time.perf_counter() - t
        rows.append((label, n_params(model), evaluator(ready, model, examples=None)(), built))
        print(f"{label}: {rows[-1][1]:,} params, {found.metric} {rows[-1][2]:.4f}", flush=True)

    t = time.perf_counter()
    chosen = allocate.allocate(found, params=fraction)
    allocated = time.perf_counter() - t
    measure("profile, all topologies", chosen.layers)
    topologies = sorted({e.topology for e in found.entries})
    for topology in topologies:
        # uniform first: its parameters are the budget of the profile's allocation beside it
        # (a uniform plan cannot keep a group dense, so it may spend less than the budget)
        found_uniform = uniform(found, topology, fraction)
        if found_uniform is None:
            print(f"uniform, {topology}: no level fits {fraction}")
            continue
        layers, params = found_uniform
        measure(f"uniform, {topology}", layers)
        same = min(1.0, params / found.dense_params)
        try:
            chosen_t = allocate.allocate(found, params=same, topologies=[topology])
            measure(f"profile, {topology}, same params", chosen_t.layers)
        except allocate.UnreachableBudget as exc:
            print(f"profile, {topology}: {exc}")
    if "--baselines" in sys.argv:
        _, stats = sensitivity.calibrated(ready)
        names = [layer.name for layer in ready.space.layers]
        linear = sum(
            dense.get_submodule(n).weight.numel()
            for n in names
            if isinstance(dense.get_submodule(n), nn.Linear)
        )
        keep = 1 - (1 - fraction) * total / linear  # the Linear weights' share that stays
        for whiten, label in ((False, "truncated SVD"), (True, "whitened SVD (SVD-LLM)")):
            model = copy.deepcopy(dense)
            saved = svd_baseline(model, names, stats, keep, whiten)
            rows.append((label, total - saved, evaluator(ready, model, examples=None)(), 0.0))
    print()
    print(f"# bench/compress.py, {datetime.now():%Y-%m-%d %H:%M}, {' '.join(args)}")
    print(
        f"profile: {len(found.entries)} options, {found.seconds:.0f} s when measured "
        f"(this run: {profiled:.0f} s with setup); allocation {allocated * 1e3:.0f} ms"
    )
    print(f"| plan | params | fraction | {found.metric} | build s |")
    print("|---|---|---|---|---|")
    for label, params, quality, built in rows:
        print(f"| {label} | {params:,} | {params / total:.3f} | {quality:.4f} | {built:.1f} |")


if __name__ == "__main__":
    main()
