"""Worker side of the Dask boundary: the model plugin and the per-shard tasks."""
