"""Judges: verdicts, the DSPy judge program and the runner that judges rows with it,
fitted judges and their plain-JSON state, trained verifiers (their features, heads and
sentence embeddings each in a module of their own), and stage-1 extraction.
May import ``data``, ``stats``, ``tasks`` and ``backends``.
"""
