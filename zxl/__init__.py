"""zxl: curate an image corpus into a scored, tagged, captioned Parquet catalog, and train and
validate a Zero-Terminal-SNR v-prediction SDXL fine-tune on it. ``zxl.cli`` is the composition
root; ``zxl.config`` the typed configuration; the demo corpus and its server live here too."""

__version__ = "0.1.0"
