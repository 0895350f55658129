"""Everything that writes the Optuna storage: setup (check, create or join), loop (a worker's
ask/tell loop), trial (one trial's steps), record (the typed trial record), pruning, warmstart,
storage, liveness, workers, interrupts, tracking (MLflow; background_tracking makes its calls on a
thread of their own, mlflow_store copies a new store from a cached empty one), optuna_internals."""
