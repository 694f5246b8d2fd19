"""The curation pipeline: Dask stages, one task per shard, idempotent and resumable (architecture.md)."""
