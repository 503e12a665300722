"""Adapters over other projects' private APIs: each lives in one module, checked by a test."""
