"""Importers: bring real datasets into zarr stores that the catalog names (`shardzip import ...`)."""
