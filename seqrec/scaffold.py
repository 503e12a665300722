"""``seqrec plugin new NAME``: write a new model plugin distribution from the templates.

The templates (``seqrec/templates/plugin/``, package data) are a complete plugin: a pyproject
with the ``seqrec`` entry point, a package registering a small working next-item model, tests
running the contract kit, and a README. ``${name}`` placeholders (``string.Template``) are
filled in; a ``package/`` folder becomes ``seqrec_NAME/`` and ``tests/test_plugin.py`` becomes
``tests/test_NAME.py``.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.metadata import entry_points
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from seqrec import __version__
from seqrec.errors import SeqrecError

#: a plugin name: the model name, the entry point name and the package suffix at once
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,23}")
TEMPLATE_SUFFIX = ".tmpl"


def check_name(name: str) -> str:
    """``name`` if it can name a plugin (lowercase letters, digits and '_', starting with a
    letter; at most 24), not already taken by an installed plugin or model; else a
    SeqrecError saying why."""
    if not NAME_RE.fullmatch(name):
        suggestion = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
        example = f", e.g. '{suggestion}'" if NAME_RE.fullmatch(suggestion) else ""
        raise SeqrecError(
            f"'{name}' cannot name a plugin",
            hint=f"use lowercase letters, digits and '_', starting with a letter (at most 24)"
            f"{example}",
        )
    taken = {ep.name for ep in entry_points(group="seqrec")}
    from seqrec.models import model_registry

    registered = model_registry()
    if name in taken or name in registered:
        by = f" (plugin '{registered[name].plugin}')" if name in registered else ""
        raise SeqrecError(
            f"the name '{name}' is taken: an installed plugin or model{by} already uses it",
            hint="`seqrec plugins` and `seqrec models` list the names in use; pick another",
        )
    return name


def render(name: str) -> dict[str, str]:
    """The plugin's files for ``name``: relative path -> text."""
    values = {
        "name": name,
        "dist": f"seqrec-{name}",
        "package": f"seqrec_{name}",
        "class_name": "".join(part.capitalize() for part in name.split("_") if part) + "Model",
        "seqrec_version": __version__,
    }
    files: dict[str, str] = {}
    root = resources.files("seqrec") / "templates" / "plugin"
    for rel, source in _walk(root, ""):
        out = rel.removesuffix(TEMPLATE_SUFFIX)
        out = re.sub(r"^package/", f"{values['package']}/", out)
        out = re.sub(r"^tests/test_plugin\.py$", f"tests/test_{name}.py", out)
        files[out] = Template(source.read_text(encoding="utf-8")).substitute(values)
    return files


def _walk(node: Traversable, prefix: str) -> list[tuple[str, Traversable]]:
    found = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            found.extend(_walk(child, f"{rel}/"))
        elif child.name.endswith(TEMPLATE_SUFFIX):
            found.append((rel, child))
    return found


def new_plugin(name: str, directory: Path) -> Path:
    """Write the plugin ``name`` into ``directory/seqrec-NAME/`` and return that folder.

    Refuses a name that is not a valid plugin name or is taken, and a folder that exists."""
    check_name(name)
    target = directory / f"seqrec-{name}"
    if target.exists():
        raise SeqrecError(
            f"{target} already exists",
            hint="remove it or choose another --dir; nothing was overwritten",
        )
    files = render(name)
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target
