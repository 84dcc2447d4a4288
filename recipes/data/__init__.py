"""Experience storage: the on-disk episode replay (``recipes.data.replay``)."""
