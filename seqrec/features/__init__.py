"""Sequence features: computed in SQL, registered and served through Feast."""
