"""Export: the judge bundle (plain JSON with a digest; judgecal's loading runs no code),
the MLflow model with flavor-style ``save_model`` / ``log_model`` / ``load_model``, adapters
for other pipelines (callable judge, DSPy metric, MLflow scorer, file judging) and the
registry's champion gate. May import ``report`` and lower.
"""
