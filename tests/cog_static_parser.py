"""predict.py read the way `cog build` reads it: from its source text, never by importing it.

Cog's schema generator (replicate/cog, pkg/schema/python: inputs.go, literals.go, module_scope.go) parses
predict.py with tree-sitter and reads each `Input(...)` keyword from the text of its value:

- a string is the raw text between its first and last quote, with no escape processing, so implicitly
  concatenated strings keep their inner quotes, line breaks and indentation; a prefix other than `r`
  (an f-string, bytes, `u`) or a parenthesised string is not read at all;
- a bare name is looked up among module-level assignments of literals; any other expression is not read;
- a default that cannot be read becomes None; choices that cannot be read fail the build.

This module reproduces those rules with Python's `ast`, so a test can compare what the web form would show
with the schema that importing predict.py gives.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

# What Cog could not read; distinct from a None that it did read.
UNREAD = object()


class StaticParseError(ValueError):
    """What `cog build` itself would refuse (an unreadable choices list, a parameter without a type)."""


@dataclass(frozen=True)
class StaticInput:
    """One input as Cog's static parser reads it; a keyword it could not read is absent from `read`."""

    name: str
    has_input_call: bool
    read: dict[str, object] = field(default_factory=dict)
    # The source text of each keyword's value, for messages and for the one-literal rule.
    texts: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, ast.expr] = field(default_factory=dict)


def cog_string(text: str) -> str | None:
    """Cog's parseStringLiteral: the raw text between the quotes, or None for anything else."""
    for quote in ('"""', "'''"):
        if text.startswith(quote):
            return text[3:-3] if len(text) >= 6 else None
    if text[:1] in ('"', "'"):
        return text[1:-1] if len(text) >= 2 else None
    if text[:2] in ('r"', "r'"):
        return text[2:-1] if len(text) >= 3 else None
    return None


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def cog_literal(node: ast.expr, source: str, scope: dict[str, object] | None = None, text: str | None = None) -> object:
    """Cog's parseDefaultValue of `node` in `source` (then resolveDefaultExpr's module-scope lookup when
    `scope` is given); `text` is the value's text when it differs from the node's (parentheses)."""
    own = _segment(source, node)
    if text is not None and text != own:  # parentheses: tree-sitter sees a parenthesized_expression
        return UNREAD
    text = own
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool)):
        return node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return int(text, 0)
    if isinstance(node, ast.Constant) and isinstance(node.value, float):
        return float(text)
    if isinstance(node, (ast.Constant, ast.JoinedStr)):  # strings, concatenated or not, f-strings, bytes
        value = cog_string(text)
        return UNREAD if value is None else value
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        compact = text.replace(" ", "")
        for parse in (lambda t: int(t, 0), float):
            try:
                return parse(compact)
            except ValueError:
                pass
        return UNREAD
    if isinstance(node, (ast.List, ast.Set)):
        items = [cog_literal(item, source) for item in node.elts]
        return UNREAD if UNREAD in items else items
    if isinstance(node, ast.Tuple):  # Cog keeps the items it can read and drops the others
        return [v for v in (cog_literal(item, source) for item in node.elts) if v is not UNREAD]
    if isinstance(node, ast.Dict):
        pairs = [(cog_literal(k, source), cog_literal(v, source)) for k, v in zip(node.keys, node.values)
                 if k is not None]
        return {k: v for k, v in pairs if k is not UNREAD and v is not UNREAD}
    if isinstance(node, ast.Name) and scope is not None:
        return scope.get(node.id, UNREAD)
    return UNREAD


def _segment(source: str, node: ast.AST) -> str:
    return ast.get_source_segment(source, node) or ""


def _keyword_text(source: str, keyword: ast.keyword) -> str:
    # The keyword's own span includes parentheses around its value; the value's span does not.
    return _segment(source, keyword).split("=", 1)[1].strip()


def module_scope(tree: ast.Module, source: str) -> dict[str, object]:
    """Cog's collectModuleScope: module-level `name = literal` assignments."""
    scope = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = cog_literal(stmt.value, source)
            if value is not UNREAD:
                scope[stmt.targets[0].id] = value
    return scope


def _choices(node: ast.expr, source: str, scope: dict[str, object], text: str | None = None) -> object:
    """Cog's resolveChoicesExpr: a list literal, a module-level list, `a + b`, or list(D.keys()/.values())."""
    if isinstance(node, ast.List):
        return cog_literal(node, source, text=text)
    if isinstance(node, ast.Name):
        value = scope.get(node.id, UNREAD)
        return value if isinstance(value, list) else UNREAD
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _choices(node.left, source, scope), _choices(node.right, source, scope)
        return UNREAD if UNREAD in (left, right) else left + right
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list" and node.args
            and isinstance(inner := node.args[0], ast.Call) and isinstance(inner.func, ast.Attribute)
            and isinstance(inner.func.value, ast.Name)):
        mapping = scope.get(inner.func.value.id)
        if isinstance(mapping, dict) and inner.func.attr in ("keys", "values"):
            return list(getattr(mapping, inner.func.attr)())
    return UNREAD


def _is_input_call(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == "Input") or (
        isinstance(func, ast.Attribute) and func.attr == "Input" and isinstance(func.value, ast.Name)
        and func.value.id == "cog")


def _read_input_call(name: str, call: ast.Call, source: str, scope: dict[str, object]) -> StaticInput:
    """Cog's parseInputCall: only keyword arguments, each by its own rule."""
    read, texts, nodes = {}, {}, {}
    for keyword in call.keywords:
        if keyword.arg is None:
            continue
        text, node = _keyword_text(source, keyword), keyword.value
        texts[keyword.arg], nodes[keyword.arg] = text, node
        if keyword.arg == "default":
            value = cog_literal(node, source, scope, text)
            read["default"] = None if value is UNREAD else value  # unreadable defaults become None
        elif keyword.arg == "description":
            value = cog_string(text)
            if value is None and isinstance(node, ast.Name):
                value = scope.get(node.id) if isinstance(scope.get(node.id), str) else None
            if value is not None:
                read["description"] = value
        elif keyword.arg in ("ge", "le", "min_length", "max_length"):
            if (number := _number(text)) is not None:
                read[keyword.arg] = int(number) if keyword.arg.endswith("length") else number
        elif keyword.arg == "regex":
            if (value := cog_string(text)) is not None:
                read["regex"] = value
        elif keyword.arg == "deprecated":
            if text in ("True", "False"):
                read["deprecated"] = text == "True"
        elif keyword.arg == "choices":
            value = _choices(node, source, scope, text)
            if value is UNREAD:
                raise StaticParseError(f"parameter '{name}': choices expression cannot be statically resolved")
            read["choices"] = value
    return StaticInput(name, True, read, texts, nodes)


def read_inputs(path: Path, class_name: str = "Predictor") -> dict[str, StaticInput]:
    """Every input of `class_name.run` (or `.predict`) in `path`, in order, as `cog build` reads them."""
    source = Path(path).read_text()
    tree = ast.parse(source)
    scope = module_scope(tree, source)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if cls is None:
        raise StaticParseError(f"{path} has no class {class_name}")
    methods = {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    method = methods.get("run") or methods.get("predict")
    if method is None:
        raise StaticParseError(f"{class_name} has no run() or predict() method")
    args = method.args.args[1:] + method.args.kwonlyargs  # not self
    defaults = [None] * (len(method.args.args) - 1 - len(method.args.defaults)) + list(method.args.defaults)
    defaults += list(method.args.kw_defaults)
    inputs = {}
    for arg, default in zip(args, defaults):
        if arg.annotation is None:
            raise StaticParseError(f"parameter '{arg.arg}' has no type annotation")
        if default is None:
            inputs[arg.arg] = StaticInput(arg.arg, False)
        elif _is_input_call(default):
            inputs[arg.arg] = _read_input_call(arg.arg, default, source, scope)
        else:
            text = _segment(source, default)
            value = cog_literal(default, source, scope)
            if value is UNREAD:
                raise StaticParseError(f"parameter '{arg.arg}': default `{text}` cannot be statically resolved")
            inputs[arg.arg] = StaticInput(arg.arg, False, {"default": value}, {"default": text}, {"default": default})
    return inputs


# Cog's PrimitiveType.JSONType for the names an output field may use (pkg/schema/types.go).
_OUTPUT_PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
                      "bool": {"type": "boolean"}, "Path": {"type": "string", "format": "uri"}}


def _output_type(node: ast.expr) -> dict:
    """An annotation's text as Cog's resolveFieldSchemaType reads it: a primitive name, `list[X]` (nested too),
    `Optional[X]` or `X | None` as nullable; anything else (a union, Any, a bare list) is not a typed field."""
    if isinstance(node, ast.Name) and node.id in _OUTPUT_PRIMITIVES:
        return dict(_OUTPUT_PRIMITIVES[node.id])
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        if node.value.id in ("list", "List"):
            return {"type": "array", "items": _output_type(node.slice)}
        if node.value.id == "Optional":
            return {**_output_type(node.slice), "nullable": True}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        for this, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(other, ast.Constant) and other.value is None:
                return {**_output_type(this), "nullable": True}
    raise StaticParseError(f"`{ast.unparse(node)}` is not an output type with a schema of its own")


def read_output(path: Path, class_name: str = "Output") -> dict:
    """The Output component `cog build` writes for the BaseModel `class_name` in `path`, from its source text."""
    tree = ast.parse(Path(path).read_text())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if cls is None:
        raise StaticParseError(f"{path} has no class {class_name}")
    properties, required = {}, []
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            prop = _output_type(node.annotation)
            properties[name] = {**prop, "title": " ".join(p[:1].upper() + p[1:] for p in name.split("_"))}
            if node.value is None and not prop.get("nullable"):
                required.append(name)
    return {"title": "Output", "type": "object", "properties": properties, **({"required": required} if required else {})}
