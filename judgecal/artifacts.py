"""The names of what a calibration's MLflow run holds, used where each is written and
where it is read back (the champion gate, ``judgecal report``, a card's folder). Any layer
may use this module: it imports nothing."""

from __future__ import annotations

EVALUATION_FILE = "evaluation.json"
"""The evaluation record: every judge's verdicts on the test rows, with their groups."""

REPORT_FILE = "report.json"
"""Agreement with humans, with intervals, and the comparison of raw and calibrated judge."""

METRICS_TABLE = "metrics.json"
"""Every metric of every judge as one MLflow table."""

ROWS_FILE = "rows.json"
"""The ids of the rows in each part of the split (train, dev, test, gate, calibration)."""

GATE_FILE = "gate.json"
"""The calibrated judge's verdicts on the gate rows, for the registry's champion gate."""

SELECTIVE_FILE = "selective.json"
"""A selective judge's band and guarantee, and what it did on the test rows (or why no band)."""

PROGRAM_FILE = "program.json"
"""A DSPy judge program's saved state."""

CARD_DIR = "card"
"""The judge card: markdown, HTML with the plots embedded, the plots."""

CARD_FILE = "judge_card.md"
HTML_CARD_FILE = "judge_card.html"
"""The judge card's pages inside ``card/``."""

BUNDLE_DIR = "bundle"
"""The judge bundle (plain JSON), as ``judgecal judge --judge`` and ``load_judge`` read it."""

MODEL_NAME = "judge"
"""The MLflow model of the calibrated judge: ``runs:/<run id>/judge``."""

REGISTRY_DECISION_FILE = "registry_decision.json"
"""Why the registry's champion moved or stayed."""

LEADERBOARD_FILE = "leaderboard.md"
LEADERBOARD_TABLE = "leaderboard.json"
LEADERBOARD_PLOT = "leaderboard.png"
"""A search's trials (its parent run): as markdown, as JSON rows, as a plot."""

MONITOR_PLOT = "monitor.png"
MONITOR_STATE_FILE = "monitor_state.json"
"""A monitor's run: agreement batch after batch with its confidence sequence; the state it resumes from."""
