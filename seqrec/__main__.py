"""``python -m seqrec``: the ``seqrec`` command (what ``torchrun ... -m seqrec train`` runs)."""

from seqrec.cli import main

main()
