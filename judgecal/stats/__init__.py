"""Statistics: agreement metrics from confusion matrices, the group bootstrap, the human
ceiling, bias measures, prediction-powered estimates and the band of a selective judge
(Learn then Test). May import only ``data``.
"""
