"""Aesthetic scorers: ``score(batch) -> scores``, one family with a name→class registry.

Empty until the scoring issue lands; the catalog's ``aesthetic`` and ``score`` columns are null
until then."""
