"""ZTSNR v-prediction sampling (RECIPE.md "Sampling"): the schedule, sigmas and samplers so far;
model loading and validation grids are still to come (architecture.md)."""
