"""What a trial measures: training (Lightning) and latency."""
