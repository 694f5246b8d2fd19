"""The Parquet catalog: schema v1, assembly from stage outputs, and the manifest."""
