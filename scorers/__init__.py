"""Aesthetic scorers: ``score(batch) -> scores`` and the embedding each image is scored from, one
family with a name→class registry (technical, LAION and waifu heads over CLIP), and taste heads
(architecture.md)."""
