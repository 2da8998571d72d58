"""Judges: verdicts, the DSPy judge program and the runner that judges rows with it,
fitted judges and their plain-JSON state, trained verifiers, and stage-1 extraction.
May import ``data``, ``stats``, ``tasks`` and ``backends``.
"""
