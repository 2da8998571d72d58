"""Statistics: agreement metrics from confusion matrices, the group bootstrap, the human
ceiling, bias measures, prediction-powered estimates, the rows to label next with the
estimate from their labels (active inference), and the band of a selective judge (Learn
then Test). May import only ``data``.
"""
