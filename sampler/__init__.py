"""ZTSNR v-prediction sampling and validation grids (RECIPE.md). Empty until the sampler issue lands."""
