"""Read-only views of a study: pareto (table, plot, hypervolume), selection, export, packages,
MLflow models, the parent run's summary, the bond probe.

Room rule: results/ reads the Optuna storage through `study.record` and never writes it (no
trial is asked or told here); it may import study/ and every room below it, never report/ or a
command. What trains or measures lives in measure/ (or in the command that does it).
"""
