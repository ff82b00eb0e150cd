"""Client side of the Dask boundary: plan shards, start or join a cluster, submit, follow, commit."""
