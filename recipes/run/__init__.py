"""Run plumbing that knows no algorithm: the shared config base and presets (``recipes.run.config``), the run
directory (``recipes.run.rundir``) and the online loop (``recipes.run.loop``)."""
