"""The ZTSNR v-prediction SDXL fine-tuning recipe (RECIPE.md). Empty until the trainer issue lands."""
