"""Human-labelled rows: reading files with errors located by file, line and field, the
grouped split, and importers of published human-judgment datasets.

Imports nothing of judgecal but the utilities (``workspace``, ``redact``, ``progress``):
what a task's rows look like comes in as a :class:`~judgecal.data.rows.RowShape`.
"""
