"""Helpers shared by the tests (not tests themselves): tiny in-memory models and tokenizers, and the float64
attention reference with its random cases. Tests import them as ``helpers.<module>`` (``tests`` is on pytest's
pythonpath); benchmarks keep their own copies, so tests and benchmarks never import each other."""
