"""Built-in CLI command groups; each module exposes ``register(cli)``."""
