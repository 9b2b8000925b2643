"""The coordinator decides: rounds, validation, aggregation, commit, history."""
