"""The OpenAPI schema written for coglet equals what Cog's inspector derives from predict.py."""

import json

from cog import _inspector

from e5.openapi import SCHEMA_PATH, build_schema, title_case


def test_the_committed_schema_is_up_to_date():
    assert SCHEMA_PATH.exists(), "run `python -m e5 schema`"
    assert json.loads(SCHEMA_PATH.read_text()) == build_schema(), "predict.py changed: run `python -m e5 schema`"


def test_every_input_and_output_field_has_the_inspectors_type():
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
    assert schema["Output"] == info.output.json_type()


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


def test_vector_fields_admit_both_shapes_that_encoding_format_describes():
    schemas = build_schema()["components"]["schemas"]
    output, inputs = schemas["Output"]["properties"], schemas["Input"]["properties"]
    # Arrays of numbers or base64 strings: `cog build` takes no union in an output, so any JSON (Opaque).
    for name in ("query_embedding", "passage_embedding"):
        assert output[name] == {"type": "object", "nullable": True, "title": title_case(name)}
    assert output["embeddings"]["type"] == "array" and output["embeddings"]["nullable"]
    assert output["embeddings_file"] == {"type": "string", "format": "uri", "nullable": True,
                                         "title": "Embeddings File"}
    assert schemas["encoding_format"]["enum"] == ["float", "base64", "npy"]
    assert inputs["encoding_format"]["default"] == "float"
    described = inputs["encoding_format"]["description"]
    assert all(shape in described for shape in ("arrays of numbers", "base64", "little-endian float32",
                                                "`embeddings_file`", "[texts, dimensions]"))
    assert "alias of `passage`" in inputs["document"]["description"]
