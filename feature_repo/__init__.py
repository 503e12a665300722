"""seqrec's Feast repo: installed as the package data ``seqrec.feature_repo`` (see setup.py)."""
