"""The pipeline: the experiment file, one calibration end to end, the search with its
MLflow parent and child runs, and MLflow tracking. The only package that ties everything
together; only the CLI imports it.
"""
