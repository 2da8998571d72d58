"""Calibration: the test-row guard, DSPy optimizers, post-hoc decisions, trained
verifiers and stacking as estimators, the strategy registry, selection without test rows
and the Optuna search with the storage its studies live in. May import everything below it (``judges`` and lower), never
``report``, ``export`` or ``pipeline``.
"""
