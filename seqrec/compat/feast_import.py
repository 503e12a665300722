"""Import Feast without typeguard's import-time instrumentation.

Feast decorates its classes with typeguard's ``@typechecked``, which re-parses and recompiles
every annotated method from source when its module is imported: more than half of the time of
``import feast``, paid by every seqrec command and by the serving process. seqrec builds Feast
objects only from its own validated definitions, so those run-time checks buy nothing here.
:func:`skip_feast_typechecks` makes ``@typechecked`` a pass-through before Feast is first
imported (Feast is the only package of seqrec's environment that uses typeguard);
``SEQREC_FEAST_TYPECHECKS=1`` keeps the checks.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV = "SEQREC_FEAST_TYPECHECKS"


def _passthrough(target: Any = None, **_options: Any) -> Any:
    """``@typechecked`` and ``@typechecked(...)`` that return what they decorate."""
    if target is None:
        return lambda inner: inner
    return target


_passthrough.seqrec_passthrough = True  # type: ignore[attr-defined]


def skip_feast_typechecks() -> bool:
    """Make typeguard's ``@typechecked`` a pass-through for modules imported from now on.

    True when it is (now or already); False when ``SEQREC_FEAST_TYPECHECKS`` asks for the
    checks, typeguard is not installed, or Feast was imported before this call."""
    if os.environ.get(ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        import typeguard
    except ImportError:
        return False
    if getattr(typeguard.typechecked, "seqrec_passthrough", False):
        return True
    if "feast" in sys.modules:
        return False  # too late: its classes are instrumented already
    typeguard.typechecked = _passthrough
    return True
