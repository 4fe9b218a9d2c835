"""The predictor's OpenAPI schema, built the way `cog build` builds it.

`cog build` bakes `.cog/openapi_schema.json` into the image with Cog's Go schema generator, and coglet
serves that file as `/openapi.json` and validates inputs against it. Here the same document is assembled
for a local coglet: the inputs from the field types that Cog's own Python inspector (`cog._inspector`,
`cog._adt`) derives from `predict.py`, the output by the Go generator's rules (`output_schema`), since
the Python inspector refuses a nested list (`list[list[float]]`) that the Go generator and coglet take.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from unittest import mock

from ..settings import PROJECT_ROOT as REPO_ROOT

SCHEMA_PATH = REPO_ROOT / ".cog" / "openapi_schema.json"
PREDICTOR_REF = "predict.py:Predictor"


def title_case(name: str) -> str:
    """Cog's field titles: split on '_', upper-case each part's first letter, join with spaces."""
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _input_schema(inputs) -> tuple[dict, dict]:
    """The `Input` component and the enum components of inputs with `choices`."""
    from cog import _adt as adt

    properties: dict = {}
    enums: dict = {}
    required: list[str] = []
    for name, field in inputs.items():
        ft = field.type
        nullable = ft.repetition in (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED)
        if field.choices is not None:
            enums[name] = {
                "description": "An enumeration.",
                "enum": list(field.choices),
                "title": name,
                "type": ft.primitive.json_type()["type"],
            }
            prop: dict = {"allOf": [{"$ref": f"#/components/schemas/{name}"}]}
        else:
            prop = {"title": title_case(name), **ft.json_type()}
        prop["x-order"] = field.order
        if field.default is not None:
            prop["default"] = field.default
        elif nullable:
            prop["default"] = None
        elif ft.repetition in (adt.Repetition.REQUIRED, adt.Repetition.REPEATED):
            required.append(name)
        if nullable:
            prop["nullable"] = True
        if field.description is not None:
            prop["description"] = field.description
        for attr, key in (("ge", "minimum"), ("le", "maximum"), ("min_length", "minLength"),
                          ("max_length", "maxLength"), ("regex", "pattern")):
            if getattr(field, attr) is not None:
                prop[key] = getattr(field, attr)
        if field.deprecated:
            prop["deprecated"] = True
        properties[name] = prop
    schema = {"properties": properties, "title": "Input", "type": "object"}
    if required:
        schema["required"] = required
    return schema, enums


_JSON = {"application/json": {"schema": {}}}
_VALIDATION_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
                     "description": "Validation Error"}


def _fixed_paths() -> dict:
    ok = {"200": {"content": _JSON, "description": "Successful Response"}}
    return {
        "/": {"get": {"operationId": "root__get", "responses": ok, "summary": "Root"}},
        "/health-check": {"get": {"operationId": "healthcheck_health_check_get", "responses": ok,
                                  "summary": "Healthcheck"}},
        "/predictions": {"post": {
            "description": "Run a single prediction on the model",
            "operationId": "predict_predictions_post",
            "requestBody": {"content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/PredictionRequest"}}}},
            "responses": {
                "200": {"content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictionResponse"}}},
                    "description": "Successful Response"},
                "422": _VALIDATION_ERROR,
            },
            "summary": "Predict",
        }},
        "/predictions/{prediction_id}/cancel": {"post": {
            "operationId": "cancel_predictions__prediction_id__cancel_post",
            "parameters": [{"in": "path", "name": "prediction_id", "required": True,
                            "schema": {"title": "Prediction Id", "type": "string"}}],
            "responses": {**ok, "422": _VALIDATION_ERROR},
            "summary": "Cancel",
        }},
    }


def _fixed_components() -> dict:
    def text(title: str, **extra) -> dict:
        return {"title": title, "type": "string", **extra}

    return {
        "PredictionRequest": {"properties": {"id": text("Id"), "input": {"$ref": "#/components/schemas/Input"}},
                              "title": "PredictionRequest", "type": "object"},
        "PredictionResponse": {"properties": {
            "completed_at": text("Completed At", format="date-time"),
            "created_at": text("Created At", format="date-time"),
            "error": text("Error"),
            "id": text("Id"),
            "input": {"$ref": "#/components/schemas/Input"},
            "logs": text("Logs"),
            "metrics": {"title": "Metrics", "type": "object"},
            "output": {"$ref": "#/components/schemas/Output"},
            "started_at": text("Started At", format="date-time"),
            "status": text("Status"),
            "version": text("Version"),
        }, "title": "PredictionResponse", "type": "object"},
        "Status": {"description": "An enumeration.",
                   "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
                   "title": "Status", "type": "string"},
        "HTTPValidationError": {"properties": {"detail": {
            "items": {"$ref": "#/components/schemas/ValidationError"}, "title": "Detail", "type": "array"}},
            "title": "HTTPValidationError", "type": "object"},
        "ValidationError": {"properties": {
            "loc": {"items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "title": "Location",
                    "type": "array"},
            "msg": text("Message"),
            "type": text("Error Type"),
        }, "required": ["loc", "msg", "type"], "title": "ValidationError", "type": "object"},
    }


def _json_type(annotation) -> dict:
    """One output type as Cog's Go generator writes it (pkg/schema/schema_type.go, `coreSchema`): primitives,
    `list[X]` as an array of X (nested lists included), `Optional[X]` as X with `nullable`."""
    from cog import Path as CogPath

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise ValueError(f"`cog build` takes no union in an output, only Optional[X]: {annotation}")
        return {**_json_type(inner[0]), "nullable": True}
    if origin is list:
        return {"type": "array", "items": _json_type(args[0])}
    primitives = {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
                  bool: {"type": "boolean"}, CogPath: {"type": "string", "format": "uri"}}
    if annotation in primitives:
        return dict(primitives[annotation])
    raise ValueError(f"no output schema rule for {annotation!r}")


def output_schema(model: type) -> dict:
    """The `Output` component for a `cog.BaseModel` output, as Cog's Go generator writes it: one titled
    property per field in order, required unless Optional or defaulted."""
    hints = typing.get_type_hints(model)
    properties, required = {}, []
    for field in dataclasses.fields(model):
        prop = _json_type(hints[field.name])
        properties[field.name] = {**prop, "title": title_case(field.name)}
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        if not prop.get("nullable") and not has_default:
            required.append(field.name)
    schema = {"title": "Output", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def build_schema(predictor_ref: str = PREDICTOR_REF) -> dict:
    """The OpenAPI document for `predictor_ref` ('file.py:Class', relative to the repo root)."""
    import cog
    from cog import _inspector

    module_file, class_name = predictor_ref.split(":")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    # The inspector reads the inputs; its reading of the output (which refuses nested lists) is skipped.
    with mock.patch.object(_inspector, "_create_output_type", lambda annotation: annotation):
        info = _inspector.create_predictor(Path(module_file).stem, class_name)
    input_schema, enums = _input_schema(info.inputs)
    return {
        "components": {"schemas": {
            "Input": input_schema,
            "Output": output_schema(info.output),
            **enums,
            **_fixed_components(),
        }},
        "info": {"title": "Cog", "version": cog.__version__},
        "openapi": "3.0.2",
        "paths": _fixed_paths(),
    }


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the schema where coglet looks for it (`.cog/openapi_schema.json`), only where it differs: serving
    leaves the committed file alone while predict.py matches it."""
    text = json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path
