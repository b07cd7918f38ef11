"""Converts pydantic models into structural OpenAPI v3 schemas for CustomResourceDefinitions.

Pydantic emits JSON Schema (draft 2020-12): `$ref`s into `$defs`, `anyOf` with a null branch
for optional fields and no defaults for `default_factory` fields. The Kubernetes API server
wants a structural schema instead: everything inlined, `nullable: true`, a `type` on every
node, and defaults spelled out so that it applies them itself. Anything this converter does
not know how to express is an error rather than a silently looser schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema, to_jsonable_python

Schema = dict[str, Any]

# JSON Schema keywords the converter passes through unchanged.
_PASSTHROUGH = frozenset(
    {
        "type",
        "description",
        "default",
        "enum",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
        "nullable",
        "x-kubernetes-validations",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    }
)
_DROPPED = frozenset({"title"})


class UnsupportedSchemaError(ValueError):
    """The model uses a construct a structural schema cannot express."""


class _KubernetesJsonSchema(GenerateJsonSchema):
    """Emits defaults for `default_factory` fields too, so the API server applies them."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = self.generate_inner(schema["schema"])
        if "default" in schema:
            value = schema["default"]
        elif "default_factory" in schema and not schema.get("default_factory_takes_data"):
            value = schema["default_factory"]()  # type: ignore[call-arg]
        else:
            return json_schema
        if value is None:
            # Optional fields stay absent; `nullable` says null is accepted.
            return json_schema
        return {**json_schema, "default": _jsonable_default(value)}


def _jsonable_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        # Spelled out in full: the API server checks a default against the CEL rules as it
        # stands, without filling in nested defaults first (`{}` would fail `self.size`).
        return model_default(value)
    return to_jsonable_python(value, by_alias=True)


def model_default(value: BaseModel) -> Any:
    """A model instance as a schema default: its JSON form, optional (None) fields left out."""
    return value.model_dump(mode="json", by_alias=True, exclude_none=True)


def structural_schema(model: type[BaseModel], *, nullable_optionals: bool) -> Schema:
    """The structural OpenAPI v3 schema of `model` (camelCase property names).

    Optional (`X | None`) fields become `nullable: true` when nullable_optionals is set;
    otherwise they are plain optional fields, and the API server prunes an explicit null,
    so that null and unset mean the same thing (what spec fields want: a CEL `has()` on a
    stored null would be true).
    """
    raw = model.model_json_schema(by_alias=True, schema_generator=_KubernetesJsonSchema)
    converter = _Converter(raw.pop("$defs", {}), nullable_optionals=nullable_optionals)
    return converter.convert(raw, path="")


class _Converter:
    def __init__(self, definitions: Schema, *, nullable_optionals: bool) -> None:
        self._definitions = definitions
        self._nullable_optionals = nullable_optionals

    def convert(self, node: Schema, path: str) -> Schema:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            return _merge(self.convert(self._definitions[name], path), self.convert(node, path))
        if "allOf" in node:
            # Older pydantic wraps a `$ref` that has sibling keys in a one-element allOf.
            (only,) = node.pop("allOf")
            return _merge(self.convert(only, path), self.convert(node, path))
        if "anyOf" in node:
            return self._convert_union(node, path)
        if "const" in node:
            node["enum"] = [node.pop("const")]

        out: Schema = {}
        for key, value in node.items():
            self._convert_keyword(out, key, value, path)
        return out

    def _convert_keyword(self, out: Schema, key: str, value: Any, path: str) -> None:
        if key in _DROPPED:
            return
        if key == "properties":
            out[key] = {name: self.convert(sub, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = self.convert(value, f"{path}[*]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = self.convert(value, f"{path}.*")
            elif value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif key in _PASSTHROUGH:
            out[key] = value
        else:
            where = path or "<root>"
            raise UnsupportedSchemaError(f"{where}: keyword {key!r} is not supported")

    def _convert_union(self, node: Schema, path: str) -> Schema:
        branches: list[Schema] = node.pop("anyOf")
        others = [b for b in branches if b.get("type") != "null"]
        if len(others) < len(branches):
            if len(others) != 1:
                raise UnsupportedSchemaError(f"{path}: only `X | None` unions are supported")
            merged = _merge(self.convert(others[0], path), self.convert(node, path))
            if self._nullable_optionals:
                merged["nullable"] = True
            return merged
        if node.get("x-kubernetes-int-or-string"):
            out = self.convert(node, path)
            out["anyOf"] = branches
            return out
        raise UnsupportedSchemaError(f"{path}: unions other than `X | None` are not structural")


def _merge(base: Schema, overrides: Schema) -> Schema:
    """`base` (a referenced or union branch schema) refined by the keys written beside it."""
    merged = {**base, **overrides}
    rules = base.get("x-kubernetes-validations", []) + overrides.get("x-kubernetes-validations", [])
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged
