"""Tasks: a judge's DSPy signature, the shape of its rows read off it, and how a task
name (built-in or ``module:Signature``) resolves, or a bundle's JSON description is
rebuilt without importing anything. May import ``data`` and ``signatures``.
"""
