"""Structural CRD schemas from the pydantic models, written to manifests/ and the chart.

The API server accepts only structural schemas: no $ref, every node typed, no `additionalProperties` beside
`properties`, nullability spelled by omission. pydantic's JSON Schema is close; this module closes the gap,
so the models stay the single source of truth (tandem.api.generate writes and checks the files).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, get_args

import yaml
from pydantic import BaseModel

from tandem.api.resources import CATEGORY, GROUP, VERSION, Resource

Schema = dict[str, Any]

def _inline(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _inline({**target, **siblings}, defs)
    return {key: _inline(value, defs) for key, value in node.items()}


def _drop_null_branches(node: Any) -> Any:
    """`X | None` becomes X: an absent field is how Kubernetes spells null."""
    if isinstance(node, list):
        return [_drop_null_branches(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _drop_null_branches(value) for key, value in node.items()}
    branches = node.get("anyOf")
    if branches is not None and not node.get("x-kubernetes-int-or-string"):
        kept = [branch for branch in branches if branch.get("type") != "null"]
        if len(kept) == 1:
            del node["anyOf"]
            node = {**kept[0], **node}
        else:
            node["anyOf"] = kept
    if node.get("default", 0) is None:
        del node["default"]
    elif isinstance(node.get("default"), dict):
        node["default"] = _without_nulls(node["default"])
    return node


def _without_nulls(value: Any) -> Any:
    """A default object without its null fields: the API server checks defaults against the schema."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    return value


_EXCLUSIVE = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}


def _structural(node: Any) -> Any:
    """Remove what structural schemas forbid or do not need: titles, additionalProperties: false."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    result: Schema = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key in _EXCLUSIVE and not isinstance(value, bool):
            # JSON Schema 2020-12 (pydantic's gt/lt) has a numeric bound; OpenAPI v3, which the API server
            # reads, has minimum/maximum plus a boolean flag.
            result[_EXCLUSIVE[key]] = value
            result[key] = True
            continue
        if key == "properties":
            result[key] = {name: _structural(prop) for name, prop in value.items()}
        else:
            result[key] = _structural(value)
    if "properties" in result:
        result.setdefault("type", "object")
    return result


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation mentions, however deeply nested in unions and generics."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in get_args(annotation):
        yield from _models(argument)


def _object_defaults(model: type[BaseModel], raw: Schema, defs: dict[str, Schema]) -> None:
    """`default: {}` on every object field that defaults to an empty model.

    pydantic leaves defaults made by default_factory out of the schema; without them the API server would
    not fill the nested defaults, and CEL rules such as `self.replicas.max >= self.replicas.min` would
    fail on an omitted `replicas`.
    """
    seen: set[type[BaseModel]] = set()
    pending = [model]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        node = raw if current is model else defs.get(current.__name__, {})
        for name, info in current.model_fields.items():
            pending.extend(_models(info.annotation))
            if info.default_factory is None:
                continue
            default = info.default_factory()  # type: ignore[call-arg]
            alias = info.alias or name
            if isinstance(default, BaseModel) and alias in node.get("properties", {}):
                node["properties"][alias]["default"] = default.model_dump(mode="json", by_alias=True)


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    _object_defaults(model, raw, defs)
    schema: Schema = _structural(_drop_null_branches(_inline(raw, defs)))
    return schema


def crd(resource: Resource) -> Schema:
    """The CustomResourceDefinition of one resource."""
    spec = openapi_schema(resource.spec)
    if resource.spec_rules:
        spec["x-kubernetes-validations"] = resource.spec_rules
    status = openapi_schema(resource.status)
    root: Schema = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if resource.root_rules:
        root["x-kubernetes-validations"] = resource.root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/name": "tandem", "app.kubernetes.io/part-of": "tandem"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced" if resource.namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": resource.printer_columns,
                    "schema": {
                        "openAPIV3Schema": root
                    },
                }
            ],
        },
    }


def render(resource: Resource) -> str:
    header = "# Generated by `tandem crds` from tandem.api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(resource), sort_keys=False, width=120)
