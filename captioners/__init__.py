"""Captioners: natural-language captions for the best-scored images (one family, a registry).

Empty until the captioning issue lands; the catalog's ``caption`` column is null until then."""
