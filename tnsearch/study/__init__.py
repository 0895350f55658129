"""Everything that writes the Optuna storage: setup (check, create or join), loop (a worker's
ask/tell loop), trial (one trial's steps), record (the typed trial record), pruning, warmstart,
storage, liveness, workers, interrupts, tracking (MLflow; background_tracking makes its calls on a
thread of their own, mlflow_store copies a new store from a cached empty one), optuna_internals.

Room rule: study/ is the only room that writes the Optuna storage and a trial's MLflow run; a
trial's attributes are read and written only through `record`. It may import budget/, measure/
and every room below them; never results/, report/, a command or `tnsearch.cli`.
"""
