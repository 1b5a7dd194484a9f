"""Getting a model to run SWAA on: loading it, knowing which models exist, and whether it fits in memory.

Kept apart from the engine because it deals with files, the Hugging Face Hub and devices, not attention; the engine
works on any model handed to it. ``loading`` (load_model: embedded GGUF models, Hub ids, local folders, the disk and
in-memory caches), ``registry`` (the known models and their sources) and ``memory`` (weight, KV-cache and activation
estimates, the check that a run fits before it starts).
"""
