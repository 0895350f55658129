"""The environment variables tnsearch's processes hand each other: a command to the local workers
it starts (`workers=N`, `tnsearch.study.workers.spawn`), read back by the command line there
(`tnsearch.cli`)."""

#: Set in the local workers a `workers=N` command starts.
ENV_SPAWNED = "TNSEARCH_SPAWNED"
#: A local worker's overrides (JSON list), handed over by its parent.
ENV_OVERRIDES = "TNSEARCH_OVERRIDES"
