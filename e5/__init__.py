"""E5 text embeddings: the registry, prompts, pooling and encoder behind the Cog predictor."""

from .encoder import Encoder
from .errors import E5Error, RequestError, ServiceError
from .prompts import DEFAULT_TASK, TASK_PRESETS, InputType
from .registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec
from .service import EmbeddingFailed, EmbeddingRequest, EmbeddingResponse, EmbeddingService, load_service

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_TASK", "MODELS", "TASK_PRESETS", "E5Error", "EmbeddingFailed", "EmbeddingRequest",
    "EmbeddingResponse", "EmbeddingService", "Encoder", "InputType", "ModelSpec", "RequestError", "ServiceError",
    "get_spec", "load_service",
]
