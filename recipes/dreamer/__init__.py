"""The Dreamer family: ``dreamerv2`` (uniform weights, the baseline) and ``tempo`` (meta-weighted world model)."""
