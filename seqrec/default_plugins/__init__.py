"""Plugins that ship inside core and always load (they use the same hooks as any plugin)."""
