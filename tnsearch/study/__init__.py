"""Everything that writes the Optuna storage: setup (check, create or join), loop (a worker's
ask/tell loop), trial (one trial's steps), record (the typed trial record), pruning, warmstart,
storage, liveness, workers, interrupts, tracking (MLflow), optuna_internals."""
