"""Statistics: agreement metrics from confusion matrices, the group bootstrap, the human
ceiling, bias measures and prediction-powered estimates. May import only ``data``.
"""
