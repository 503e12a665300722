"""Sequence features: computed in SQL, registered and served through Feast."""

from seqrec.compat.feast_import import skip_feast_typechecks

skip_feast_typechecks()  # before any module of this package imports Feast
