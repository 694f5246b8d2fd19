"""The Parquet catalog: schema v1, reading it (stats, SQL, images), the browser, the choices users
enter, and exports (architecture.md; pipeline/assemble.py writes it)."""
