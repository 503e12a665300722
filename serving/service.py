"""Entry point for `bentoml build` / `bentoml serve service:SeqrecService` from this folder."""

from seqrec.service import SeqrecService

__all__ = ["SeqrecService"]
