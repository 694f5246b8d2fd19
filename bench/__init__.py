"""zxl benchmarks (``make bench``): figures measured side by side with a named baseline."""
