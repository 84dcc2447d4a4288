"""Run plumbing that knows no algorithm: the shared config base and presets (:mod:`recipes.run.config`), the run
directory (:mod:`recipes.run.rundir`) and the online loop (:mod:`recipes.run.loop`)."""
