"""Property tests (hypothesis) of generated bad input: the importers, the config loader, label
definitions, the API payloads, and SQL injection attempts. Run them alone with
``pytest -m property``; ``SEQREC_PROPERTY_EXAMPLES=500`` runs more examples per test, and
``--hypothesis-profile=no-shrink`` reports a failure without minimising it first."""

from hypothesis import Phase, settings

settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])
