"""E5 text embeddings: the registry, prompts, pooling and encoder behind the Cog predictor.

The names below load their modules on first use, so `import e5` alone (the command line's list, fetch,
verify) does not import torch. predict.py imports what it serves with when the worker loads it: imported
lazily in setup() instead, serving cost 4-10% more CPU per request.
"""

from __future__ import annotations

import importlib

# Each public name and the module that defines it.
_EXPORTS = {
    "Encoder": "encoder",
    "E5Error": "errors", "RequestError": "errors", "ServiceError": "errors",
    "DEFAULT_TASK": "prompts", "TASK_PRESETS": "prompts", "InputType": "prompts",
    "DEFAULT_MODEL": "registry", "MODELS": "registry", "ModelSpec": "registry", "get_spec": "registry",
    "EmbeddingFailed": "service", "EmbeddingRequest": "service", "EmbeddingResponse": "service",
    "EmbeddingService": "service", "load_service": "service",
}
__all__ = sorted(_EXPORTS)


# No __dir__ lists them: inspect.getmembers(e5), which Cog's inspector runs over the predictor's imports,
# would import every one.
def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'e5' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
