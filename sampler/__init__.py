"""ZTSNR v-prediction sampling (docs/recipe.md "Sampling"): the schedule and sigmas, k-diffusion's
samplers, guidance, model loading (diffusers folders and single files) and validation grids
(architecture.md)."""
