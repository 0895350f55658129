"""How well the profile's cheap predictors rank the options, and what measuring only the
candidates saves (issue 21).

    python bench/predictors.py study=mlp [key=value ...]

Measures the study's whole profile (`profile.measure=all`, every option fitted and scored), then:

- the Spearman rank correlation against each option's measured zero-shot loss of the spectra's
  prediction (`predicted_error`, milliseconds per option) and of the data-aware fit's output
  error (`error`, what a fit without a zero-shot score gives), over all options, within each
  topology, and within each group (the mean over groups);
- the anytime profile replayed on those measurements: how many options it measures for the
  ladder's budgets (`search.budgets`) and for one compress budget (`--budget`), and how much
  quality its allocation loses against the allocation on the whole profile.

The counts and correlations do not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from scipy.stats import spearmanr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.25)
    args, overrides = parser.parse_known_args()
    from hydra import compose, initialize_config_module

    from tnsearch.budget import allocate
    from tnsearch.budget.profile import Option, assemble
    from tnsearch.cli import resolve
    from tnsearch.study import loop, sensitivity, setup

    with initialize_config_module("tnsearch.conf", version_base=None):
        cfg = resolve(compose("config", overrides=[*overrides, "profile.measure=all"]))
    ready = setup.prepare(cfg)
    loop.ensure_pretrained(ready)
    full, _ = sensitivity.profile(ready, say=print)
    q0, up = full.dense_quality, full.maximize

    def loss(e) -> float:
        return e.loss(q0, up)

    def rho(entries, field: str) -> float:
        if len(entries) < 3:
            return float("nan")
        return float(spearmanr([getattr(e, field) for e in entries], [loss(e) for e in entries])[0])

    print(f"\n{cfg.name}: {len(full.entries)} options, {len(full.groups)} groups")
    print("| predictor | all options | " + " | ".join(sorted({e.topology for e in full.entries}))
          + " | within a group (mean) |")  # fmt: skip
    print("|---|---|" + "---|" * (len({e.topology for e in full.entries}) + 1))
    for field, name in (("predicted_error", "spectra (whitened, ms)"), ("error", "fit error")):
        tops = [rho([e for e in full.entries if e.topology == t], field)
                for t in sorted({e.topology for e in full.entries})]  # fmt: skip
        groups = [rho(full.options(g), field) for g in full.groups]
        groups = [g for g in groups if g == g]
        print(f"| {name} | {rho(full.entries, field):.3f} | "
              + " | ".join(f"{t:.3f}" for t in tops)
              + f" | {statistics.fmean(groups) if groups else float('nan'):.3f} |")  # fmt: skip

    dense = {"quality": q0, "latency_ms": full.dense_latency_ms, "groups": full.groups,
             "batch_size": full.batch_size, "params": full.dense_params}  # fmt: skip
    menu = [Option(e.group, e.topology, e.order, e.rank, e.layers, e.params, e.predicted_error,
                   1.0) for e in full.entries]  # fmt: skip
    truth = {e.option: e for e in full.entries}
    ladder = [{"params": float(f), "latency": None} for f in cfg.search.budgets]
    print("\n| budgets | options measured | rounds | loss of the allocation: anytime / whole |")
    print("|---|---|---|---|")
    single = [{"params": args.budget, "latency": None}]
    cases = (
        ("ladder " + str(cfg.search.budgets), ladder),
        (f"compress {args.budget:g}", single),
    )
    for name, asked in cases:
        known: dict = {}
        rounds = 0
        while rounds < sensitivity.MAX_ROUNDS:
            found = assemble(dense, menu, known, key="", metric=full.metric, maximize=up)
            todo = allocate.candidates(found, asked, neighbours=sensitivity.NEIGHBOURS,
                                       tolerance=sensitivity.TOLERANCE * abs(q0))  # fmt: skip
            todo = [k for k in todo if k not in known]
            if not todo:
                break
            rounds += 1
            known.update({k: truth[k] for k in todo})
        found = assemble(dense, menu, known, key="", metric=full.metric, maximize=up)
        losses = []
        for budget in asked:
            try:
                mine = allocate.allocate(found, **budget, measured_only=True)
                best = allocate.allocate(full, **budget)
            except allocate.UnreachableBudget:
                losses.append("unreachable")
                continue
            got = sum(loss(truth[e.option]) for e in mine.choices.values() if e is not None)
            losses.append(f"{got:.3f} / {best.loss:.3f}")
        print(f"| {name} | {len(known)} of {len(menu)} ({len(known) / len(menu):.0%}) | "
              f"{rounds} | {', '.join(losses)} |")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
