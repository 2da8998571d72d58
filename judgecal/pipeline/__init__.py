"""The pipeline: the experiment file, what the steps hand each other (``results``), one
calibration end to end, MLflow tracking, the export step (``publish``), and the search
with its MLflow parent and child runs. The only package that ties everything together;
only the CLI imports it.
"""
