"""Model versions: ids, history, diffs, the quality gate and promotion."""
