"""Experience storage: the on-disk episode replay (:mod:`recipes.data.replay`)."""
