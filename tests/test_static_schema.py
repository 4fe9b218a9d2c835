"""The web form `cog build` draws from predict.py's source text equals the committed schema.

`cog build` never imports predict.py: it reads each `Input(...)` from the source (cog_static_parser.py
reproduces its rules), while `.cog/openapi_schema.json` is built by importing the module. These tests
fail on any input whose description, default, choices or bounds Cog would read differently.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize

import pytest

from cog_static_parser import UNREAD, StaticParseError, cog_literal, cog_string, read_inputs, read_output
from conftest import REPO_ROOT

from e5.cog_tools.schema import SCHEMA_PATH

PREDICT = REPO_ROOT / "predict.py"
# Input keyword -> the key the schema gives it.
BOUNDS = {"ge": "minimum", "le": "maximum", "min_length": "minLength", "max_length": "maxLength",
          "regex": "pattern", "deprecated": "deprecated"}


def _committed() -> dict:
    return json.loads(SCHEMA_PATH.read_text())["components"]["schemas"]


def static_mismatches(inputs, schemas: dict) -> list[str]:
    """Every difference between what Cog reads from the source and what the schema says, one line each."""
    props = schemas["Input"]["properties"]
    problems = []
    if list(inputs) != list(props):
        problems.append(f"inputs {list(inputs)} in predict.py, {list(props)} in the schema")
    for name, static in inputs.items():
        prop = props.get(name, {})
        if static.read.get("description") != prop.get("description"):
            problems.append(f"{name}: Cog reads the description as {static.read.get('description')!r}, "
                            f"the schema has {prop.get('description')!r}")
        if "default" in static.read and json.dumps(static.read["default"]) != json.dumps(prop.get("default")):
            problems.append(f"{name}: Cog reads the default as {static.read['default']!r}, "
                            f"the schema has {prop.get('default')!r}")
        enum = schemas.get(name, {}).get("enum") if "allOf" in prop else None
        if static.read.get("choices") != enum:
            problems.append(f"{name}: Cog reads the choices as {static.read.get('choices')!r}, the schema has {enum!r}")
        for keyword, key in BOUNDS.items():
            if static.read.get(keyword) != prop.get(key):
                problems.append(f"{name}: Cog reads {keyword} as {static.read.get(keyword)!r}, "
                                f"the schema has {key} {prop.get(key)!r}")
    return problems


def test_cog_build_reads_every_input_as_the_committed_schema_shows_it():
    problems = static_mismatches(read_inputs(PREDICT), _committed())
    assert not problems, "cog build would show a different web form:\n" + "\n".join(problems)


def _string_tokens(text: str) -> list[tokenize.TokenInfo]:
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return [t for t in tokens if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]


def test_cog_build_reads_the_output_as_the_committed_schema_shows_it():
    # The served /openapi.json is the committed file; a built image serves what Cog reads from the source text.
    assert read_output(PREDICT) == _committed()["Output"]


def test_an_output_field_without_a_type_of_its_own_is_reported(tmp_path):
    source = tmp_path / "predict.py"
    source.write_text("class Output(BaseModel):\n    ok: list[list[float]] | None = None\n    vague: Any = None\n")
    with pytest.raises(StaticParseError, match="`Any` is not an output type"):
        read_output(source)


def test_every_description_is_one_plain_string_literal():
    for name, static in read_inputs(PREDICT).items():
        text = static.texts.get("description")
        if text is None:
            continue
        tokens = _string_tokens(text)
        assert len(tokens) == 1 and tokens[0].type == tokenize.STRING, (
            f"{name}: description must be one plain string literal (no concatenation, f-string or name), "
            f"not {text[:80]!r}")
        assert cog_string(text) == ast.literal_eval(text), (
            f"{name}: description must have no escape sequences or prefixes that Cog would show raw: {text[:80]!r}")


def test_the_task_description_names_presets_and_where_all_of_them_are():
    from e5.prompts import TASK_PRESETS

    description = read_inputs(PREDICT)["task"].read["description"]
    named = [preset for preset in TASK_PRESETS if preset in description]
    assert len(named) >= 3 and "docs/usage.md" in description  # the page lists every preset (test_packaging)


def _read_snippet(tmp_path, params: str, prelude: str = ""):
    path = tmp_path / "predict.py"
    path.write_text(f"from cog import BasePredictor, Input\n{prelude}\n"
                    f"class Predictor(BasePredictor):\n    def predict(self, {params}) -> str:\n        return ''\n")
    return read_inputs(path)


def test_the_reader_follows_cogs_literal_rules(tmp_path):
    read = _read_snippet(tmp_path, """
        a: str = Input(description="one " "two"),
        b: str = Input(description=f"{X} x"),
        c: str = Input(description=NAME, default=LIMIT),
        d: str = Input(description=("wrapped"), default=NAMES[0]),
        e: str = Input(description="it\\'s", choices=CHOICES + ["z"]),
        f: int = Input(default=-3, ge=1, le=10.5),
        g: str = Input(description=r"raw\\d", default='''tri''', choices=list(MAP.keys())),
        h: int = 7,
        i: str = Input(description=\"\"\"long
text\"\"\"),
    """, prelude="NAME = 'from scope'\nLIMIT = 5\nCHOICES = ['x', 'y']\nMAP = {'k': 1}\nNAMES = CHOICES\nX = 1\n")
    assert read["a"].read["description"] == 'one " "two'  # raw text between the outer quotes
    assert "description" not in read["b"].read  # an f-string is not read
    assert read["c"].read == {"description": "from scope", "default": 5}  # module-level literals are
    assert read["d"].read == {"default": None}  # parentheses and subscripts are not; a default falls to None
    assert read["e"].read == {"description": "it\\'s", "choices": ["x", "y", "z"]}  # escapes stay raw
    assert read["f"].read == {"default": -3, "ge": 1.0, "le": 10.5}
    assert read["g"].read == {"description": "raw\\d", "default": "tri", "choices": ["k"]}
    assert read["h"].read == {"default": 7} and not read["h"].has_input_call
    assert read["i"].read["description"] == "long\ntext"


def test_what_cog_build_refuses_is_refused(tmp_path):
    with pytest.raises(StaticParseError, match="'a': choices expression cannot be statically resolved"):
        _read_snippet(tmp_path, "a: str = Input(choices=sorted(['x']))")
    with pytest.raises(StaticParseError, match="'a': default `make\\(\\)` cannot be statically resolved"):
        _read_snippet(tmp_path, "a: str = make()")
    with pytest.raises(StaticParseError, match="'a' has no type annotation"):
        _read_snippet(tmp_path, "a=Input()")


def test_a_description_cog_reads_differently_is_reported(tmp_path):
    # The form predict.py had before: implicit concatenation and an f-string, each caught by name.
    read = _read_snippet(tmp_path, """
        query: str = Input(description="A query. "
            "More."),
        task: str = Input(description=f"Presets: {P}."),
    """, prelude="P = 'a, b'\n")
    schemas = {"Input": {"properties": {"query": {"description": "A query. More."},
                                        "task": {"description": "Presets: a, b."}}}}
    problems = static_mismatches(read, schemas)
    assert problems == [
        "query: Cog reads the description as 'A query. \"\\n            \"More.', the schema has 'A query. More.'",
        "task: Cog reads the description as None, the schema has 'Presets: a, b.'",
    ]


def test_unreadable_values_are_told_apart_from_none():
    tree = ast.parse("x = None\ny = f()")
    source = "x = None\ny = f()"
    assert cog_literal(tree.body[0].value, source) is None
    assert cog_literal(tree.body[1].value, source) is UNREAD
