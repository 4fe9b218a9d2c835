"""The OpenAPI schema written for coglet: inputs as Cog's inspector derives them from predict.py, the output as
Cog's Go generator writes it."""

import json
from typing import Optional, Union
from unittest import mock

import pytest
from cog import Path, _inspector

from e5.cog_tools.schema import SCHEMA_PATH, _json_type, build_schema, title_case


def test_the_committed_schema_is_up_to_date():
    assert SCHEMA_PATH.exists(), "run `python -m e5 schema`"
    assert json.loads(SCHEMA_PATH.read_text()) == build_schema(), "predict.py changed: run `python -m e5 schema`"


def test_every_input_field_has_the_inspectors_type():
    with mock.patch.object(_inspector, "_create_output_type", lambda annotation: annotation):
        info = _inspector.create_predictor("predict", "Predictor")
    schema = build_schema()["components"]["schemas"]
    inputs = schema["Input"]["properties"]
    assert list(inputs) == list(info.inputs)
    for name, field in info.inputs.items():
        prop = inputs[name]
        assert prop["x-order"] == field.order
        assert prop.get("description") == field.description
        if field.choices:
            assert prop["allOf"] == [{"$ref": f"#/components/schemas/{name}"}]
            assert schema[name]["enum"] == field.choices
        else:
            for key, value in field.type.json_type().items():
                assert prop[key] == value


@pytest.mark.parametrize("annotation,expected", [
    (str, {"type": "string"}),
    (Optional[float], {"type": "number", "nullable": True}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (Optional[list[list[float]]], {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                                   "nullable": True}),
    (Optional[Path], {"type": "string", "format": "uri", "nullable": True}),
])
def test_output_types_follow_cogs_go_generator(annotation, expected):
    # pkg/schema/schema_type.go: coreSchema, PrimitiveType.JSONType, and Optional fields as nullable.
    assert _json_type(annotation) == expected


def test_an_output_type_cog_build_refuses_is_refused():
    with pytest.raises(ValueError, match="no union"):
        _json_type(Union[str, list[float]])
    with pytest.raises(ValueError, match="no output schema rule"):
        _json_type(dict)


def test_inputs_match_the_documented_interface():
    props = build_schema()["components"]["schemas"]["Input"]["properties"]
    assert props["texts"]["type"] == "array" and props["texts"]["items"] == {"type": "string"}
    assert props["normalize"]["default"] is False and props["truncate"]["default"] is True
    assert props["query"]["nullable"] and props["query"]["default"] is None
    assert build_schema()["components"]["schemas"]["input_type"]["enum"] == ["passage", "query"]
    assert "required" not in build_schema()["components"]["schemas"]["Input"]


def test_batch_output_is_an_array_whose_description_lives_in_the_input_docs():
    output = build_schema()["components"]["schemas"]["Output"]
    assert output["properties"]["embeddings"]["type"] == "array"
    assert output["required"] == ["model", "dimensions", "token_count", "truncated"]


def test_titles_follow_cogs_rule():
    assert title_case("token_count") == "Token Count"
    assert title_case("input_type") == "Input Type"
    assert title_case("e5HTTP_url") == "E5HTTP Url"


def test_every_vector_field_has_one_type_that_encoding_format_describes():
    schemas = build_schema()["components"]["schemas"]
    output, inputs = schemas["Output"]["properties"], schemas["Input"]["properties"]
    numbers = {"type": "array", "items": {"type": "number"}}
    for name in ("query_embedding", "passage_embedding"):
        assert output[name] == {**numbers, "nullable": True, "title": title_case(name)}
        assert output[name + "_base64"] == {"type": "string", "nullable": True, "title": title_case(name + "_base64")}
    assert output["embeddings"] == {"type": "array", "items": numbers, "nullable": True, "title": "Embeddings"}
    assert output["embeddings_base64"]["items"] == {"type": "string"}
    for name in ("chunk_text", "chunk_start", "chunk_end"):
        assert output[name]["items"] == {"type": "integer"}
    assert output["chunk_scores"]["items"] == output["scores"]["items"] == {"type": "number"}
    assert not [name for name, prop in output.items() if prop["type"] == "object" or
                prop.get("items", {}).get("type") == "object"], "no field may be declared an object"
    assert output["embeddings_file"] == {"type": "string", "format": "uri", "nullable": True,
                                         "title": "Embeddings File"}
    assert schemas["encoding_format"]["enum"] == ["float", "base64", "ubinary", "npy"]
    assert schemas["long_texts"]["enum"] == ["truncate", "chunks", "mean"]
    assert inputs["encoding_format"]["default"] == "float" and inputs["long_texts"]["default"] == "truncate"
    described = inputs["encoding_format"]["description"]
    assert all(shape in described for shape in ("'float'", "'base64'", "'ubinary'", "'npy'", "little-endian float32",
                                                "`embeddings_file`"))
    assert all(mode in inputs["long_texts"]["description"] for mode in ("'truncate'", "'chunks'", "'mean'"))
    assert "alias of `passage`" in inputs["document"]["description"]


def test_every_input_description_reads_under_its_field():
    # The web form shows each description under its field: a few lines, the rest in README and docs/usage.md.
    inputs = build_schema()["components"]["schemas"]["Input"]["properties"]
    long = {name: len(prop["description"]) for name, prop in inputs.items() if len(prop["description"]) > 200}
    assert not long, f"descriptions over 200 characters: {long}"
