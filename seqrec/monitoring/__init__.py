"""Monitoring of runs: data and score drift (:mod:`.drift`) and the HTML run report
(:mod:`.report`, plots in :mod:`.plots`)."""
