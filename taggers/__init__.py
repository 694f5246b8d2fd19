"""Taggers: rating, year, general and character tags (one family, one signature, a registry).

Empty until the tagging issue lands; the catalog's ``rating``, ``year``, ``tags`` and
``characters`` columns are null until then."""
