"""Taggers: rating, year, general and character tags (one family, one signature, a registry: the
source's own metadata and SmilingWolf's WD taggers; architecture.md)."""
