"""Captioners: natural-language captions for the best-scored images (one family, one signature, a
name→class registry: the offline ``template`` captioner and a transformers one; architecture.md)."""
