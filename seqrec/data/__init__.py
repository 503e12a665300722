"""Behaviour events in SQL: schema, importers and a synthetic generator."""
