"""Getting a model to run SWAA on: loading it, knowing which models exist, and whether it fits in memory.

Kept apart from the engine because it deals with files, the Hugging Face Hub and devices, not attention; the engine
works on any model handed to it. ``loading`` (load_model: what a name means, device and dtype), ``loaded``
(LoadedModel, ModelInfo, the load errors), ``request`` (the steps every source shares: the memory check that places
the weights, reading a transformers folder), ``hub`` (Hugging Face Hub downloads and their errors), ``gguf`` (embedded
models and .gguf files: the converted-model disk cache, the embedded wheels), ``model_cache`` (the one in-process
LRU of loaded models), ``registry`` (the known models and their sources) and ``memory`` (weight, KV-cache and
activation estimates, the checks that a run fits memory and the model's context before it starts).
"""
