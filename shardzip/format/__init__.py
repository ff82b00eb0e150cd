"""The compressed zarr format: chunk bytes, shards, the zarr codec, weights by sha256, the store layout.

Knows zarr and fsspec, not Dask. See `shardzip.format.store` for the layout of a store.
"""
