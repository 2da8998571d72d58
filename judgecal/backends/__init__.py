"""Language-model backends: LM settings, model files (finding the embedded one, hashing),
the embedded llama.cpp engine behind DSPy's engine interface, LiteLLM models, the
response cache, the instructor bridge and LM call counting. May import ``data`` and
``tasks``.
"""
