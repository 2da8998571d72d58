"""Statistics: agreement metrics from confusion matrices, the group bootstrap, the human
ceiling, bias measures, prediction-powered estimates, and the rows to label next with the
estimate from their labels (active inference). May import only ``data``.
"""
