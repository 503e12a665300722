"""The pieces of the BentoML service (:mod:`seqrec.service`, the entry module ``bentoml serve``
and the Bento name): ``schemas`` (request and response bodies, bounded by ``[serve]``),
``batcher`` (coalescing concurrent requests), ``metrics`` (seqrec's Prometheus series) and
``fastpath`` (the ASGI middleware: token checks, body limits, the POST endpoints' fast path).
"""
