"""Reports: evaluation records, agreement with intervals and the comparison in words,
the judge card (markdown and HTML with its plots) and the short summaries a run's name
and description carry. May import ``stats`` and lower.
"""
