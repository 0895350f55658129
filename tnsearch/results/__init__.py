"""Read-only views of a study: pareto (table, plot, hypervolume), selection, export."""
