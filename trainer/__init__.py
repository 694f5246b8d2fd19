"""The ZTSNR v-prediction SDXL fine-tuning recipe (docs/recipe.md): cached latents, bucketed
batches, the loss, the loop, checkpoints, merging, exports and evaluation (architecture.md)."""
