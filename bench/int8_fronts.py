"""The front of accuracy against bytes, with and without int8 in the space (issue 26).

For each model (default: LeNet-300-100 `study=mlp` and ResNet-20 `study=quick pretrain.epochs=2`,
both on mnist5k), the dense model is trained once; then for `space.precisions=[fp32]` and
`space.precisions=[fp32,int8]` in turn, the profile is taken for every byte budget (so the
allocation at each picks only measured options, as `python -m tnsearch.compress` does) and each
budget's plan is built by data-aware decomposition, healed for `--heal` epochs (default 0: one
shot; seeded by `seed`, so that a plan two budgets choose is one point) and scored as deployed
(its int8 layers in int8, quantized after healing) on the validation and test splits. Bytes
are the weights as deployed (`precision.size_bytes`), a fraction of the dense float32 model's.

The float32 front is dominated when each of its points has an int8-space point with at most its
bytes and at least its test accuracy. Prints markdown tables, writes only under `--root`.

    python bench/int8_fronts.py [--root /tmp/bench-int8] [--heal 0] [--budgets 0.02,0.05,...]
                                [--only mlp|resnet20]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

import torch

MODELS = {
    "mlp": ("LeNet-300-100", ["study=mlp"]),
    "resnet20": ("ResNet-20", ["study=quick", "pretrain.epochs=2"]),
}
SPACES = {"fp32": "[fp32]", "fp32+int8": "[fp32,int8]"}


def front_points(overrides: list[str], budgets: list[float], heal: int, say) -> list[dict]:
    """The dense model and each budget's plan in one space: bytes, params, val and test quality."""
    from hydra import compose, initialize_config_module

    from tnsearch.cli import resolve
    from tnsearch.measure import precision, training
    from tnsearch.study import loop, sensitivity, setup
    from tnsearch.tn import n_params

    with initialize_config_module("tnsearch.conf", version_base=None):
        cfg = resolve(compose("config", overrides=[*overrides, "tracking.enabled=false"]))
    ready = setup.prepare(cfg)
    loop.ensure_pretrained(ready)
    started = time.perf_counter()
    found, _ = sensitivity.profile(ready, say=None, budgets=[{"bytes": b} for b in budgets])
    profiled = time.perf_counter() - started
    dense = sensitivity.dense_model(ready)
    dense_bytes = precision.size_bytes(dense, {})
    dense_params = n_params(dense)

    def score(model, split: str) -> float:
        return sensitivity.evaluator(ready, model, examples=None, split=split)()

    points = [
        {"plan": "dense", "budget": None, "bytes": 1.0, "params": 1.0,
         "val": score(dense, "validate"), "test": score(dense, "test")}
    ]  # fmt: skip
    built: dict[str, dict] = {}
    for b in budgets:
        try:
            chosen = sensitivity.budget_plan(ready, found, bytes=b)
        except Exception as exc:  # noqa: BLE001 - an unreachable budget is a row, not an end
            say(f"  bytes {b:g}: {exc}")
            continue
        key = repr((chosen.layers, chosen.precision))
        if key in built:  # a budget whose plan an earlier budget chose: the same point
            points.append({**built[key], "budget": b})
            continue
        torch.manual_seed(int(cfg.seed))  # each plan healed alike: the same plan, the same score
        model, _ = sensitivity.build(ready, chosen.layers)
        if heal:
            from hydra.utils import instantiate

            from tnsearch.study.trial_training import healing_optimizer

            module = ready.task(model, instantiate(healing_optimizer(cfg, warm=True)))
            training.fit(module, ready.datamodule, epochs=heal, trainer_cfg=cfg.trainer,
                         metric=ready.metric)  # fmt: skip
            model = model.cpu().eval()
        deployed = precision.deployed(model, chosen.precision)
        from tnsearch import plan as plans

        point = {
            "plan": plans.summary({"layers": chosen.layers, "precision": chosen.precision}),
            "budget": b,
            "bytes": precision.size_bytes(model, chosen.precision) / dense_bytes,
            "params": n_params(model) / dense_params,
            "val": score(deployed, "validate"),
            "test": score(deployed, "test"),
        }
        say(f"  bytes {b:g}: {point['plan']}, {point['bytes']:.4f} of the bytes, "
            f"test {point['test']:.4f}")  # fmt: skip
        points.append(point)
        built[key] = point
    say(f"  profile: {len(found.entries)} options, {len(found.measured)} measured, "
        f"{profiled:.0f} s")  # fmt: skip
    return points


def dominated(front: list[dict], by: list[dict], split: str) -> list[bool]:
    """Per point of `front`: a point of `by` has at most its bytes and at least its score on
    `split` ("val" or "test")."""
    return [
        any(q["bytes"] <= p["bytes"] + 1e-9 and q[split] >= p[split] - 1e-9 for q in by)
        for p in front
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/tmp/bench-int8")
    parser.add_argument("--heal", type=int, default=0)
    parser.add_argument("--budgets", default="0.02,0.03,0.05,0.075,0.1,0.15,0.2,0.25,0.3")
    parser.add_argument("--only", choices=sorted(MODELS), default=None)
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    started = datetime.now()
    tables = []
    for key, (label, overrides) in MODELS.items():
        if args.only and key != args.only:
            continue
        results = {}
        for space, precisions in SPACES.items():
            print(f"{label}, space.precisions={precisions}", flush=True)
            t = time.perf_counter()
            results[space] = front_points(
                [*overrides, f"root={args.root}", f"space.precisions={precisions}"],
                budgets,
                args.heal,
                say=lambda line: print(line, flush=True),
            )
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
        covered = {
            split: dominated(results["fp32"], results["fp32+int8"], split)
            for split in ("val", "test")
        }
        lines = [
            f"### {label} ({' '.join(overrides)}, heal.epochs={args.heal})",
            "",
            "| space | budget.bytes | plan | bytes | params | val acc | test acc "
            "| dominated (val / test) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for space, points in results.items():
            marks = zip(*covered.values(), strict=True) if space == "fp32" else [()] * len(points)
            for p, mark in zip(points, marks, strict=True):
                budget = "-" if p["budget"] is None else f"{p['budget']:g}"
                flag = " / ".join("yes" if m else "**no**" for m in mark)
                lines.append(
                    f"| {space} | {budget} | {p['plan']} | {p['bytes']:.4f} | {p['params']:.4f} "
                    f"| {p['val']:.4f} | {p['test']:.4f} | {flag} |"
                )
        lines.append("")
        for split, marks in covered.items():
            verdict = "dominates" if all(marks) else "does not dominate"
            lines.append(
                f"On {split} accuracy the front with int8 {verdict} the float32-only "
                f"front ({sum(marks)} of {len(marks)} of its points dominated)."
            )
        tables.append("\n".join(lines))
    print()
    print(f"# bench/int8_fronts.py, {started:%Y-%m-%d %H:%M}-{datetime.now():%H:%M}, "
          f"budgets {args.budgets}")  # fmt: skip
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
