"""Test-only kill points: a process that kills itself (SIGKILL) at a named point of its work.

The fault-injection suite (tests/reliability/) runs a real ``seqrec`` command with
``SEQREC_KILL_AT`` set and checks the stores after the command is run again::

    SEQREC_KILL_AT=import.batch:3 seqrec events import big.csv   # dies after the 3rd batch

``SEQREC_KILL_AT`` holds one or more ``name[:n]`` entries, comma-separated: the process dies
the ``n``-th time (default: the first) it reaches :func:`kill_point` with that name. The death
is a real, unclean one: no ``finally`` blocks, no atexit handlers, open transactions left to the
server, files as they are. The variable is read once, when this module is imported; without it
a kill point costs one dict lookup.

The points (where a crash there would matter):

========================  =====================================================================
``import.batch``          an events import, after each batch is written (inside the import's
                          transaction)
``import.commit``         an events import, everything written, just before the commit
``features.snapshot``     embedded feature build: the Parquet snapshot in place, its
                          ``snapshot.json`` not yet written
``features.refresh``      PostgreSQL feature refresh: rows rebuilt, watermark not yet written
                          (inside the refresh's transaction)
``materialize.batch``     materialization, after each batch of users is written online (the
                          watermark is written after the last)
``train.batch``           training, after each optimizer step
``train.batch.rank<R>``   distributed training, after each optimizer step of rank R only
``checkpoint.write``      a checkpoint's weights written, its trainer state not yet
``checkpoint.swap``       the previous checkpoint moved aside, the new one not yet in place
``model_store.save``      a model's files half written into its staging directory
``model_store.publish``   a model moved into the store, ``latest`` not yet updated
``promote.mirror``        the production pointer moved (committed), BentoML labels not mirrored
``materialize``,          the retrain steps (:func:`seqrec.runs.begin_step`): right after the
``train``, ``evaluate``,  run recorded the step as begun
``promote``
========================  =====================================================================
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "SEQREC_KILL_AT"


def _parse(spec: str) -> dict[str, int]:
    plan: dict[str, int] = {}
    for entry in spec.split(","):
        name, _, count = entry.strip().partition(":")
        if name:
            plan[name] = int(count) if count.strip().isdigit() else 1
    return plan


#: name -> hits left before the kill (empty unless SEQREC_KILL_AT is set)
_PLAN: dict[str, int] = _parse(os.environ.get(KILL_ENV, ""))


def kill_point(name: str) -> None:
    """SIGKILL this process if ``SEQREC_KILL_AT`` names ``name`` and this is the hit it asks
    for (see the module doc); otherwise do nothing."""
    left = _PLAN.get(name)
    if left is None:
        return
    if left > 1:
        _PLAN[name] = left - 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
