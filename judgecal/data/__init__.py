"""Human-labelled rows: reading files with errors located by file, line and field, the
grouped split, files of judged rows read back (verdicts, abstentions, the abstention
queue), and importers of published human-judgment datasets.

Imports nothing of judgecal but the utilities (``workspace``, ``redact``, ``progress``):
what a task's rows look like comes in as a :class:`~judgecal.data.rows.RowShape`.
"""
