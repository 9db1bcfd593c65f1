from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem.api.crdgen import crd, openapi_schema
from tandem.api.generate import drift, generated_files
from tandem.api.resources import COMPUTE_POOL, INFERENCE_SERVICE, RESOURCES, TRAINING_JOB, Resource
from tandem.api.trainingjob import TrainingJobSpec

REPO_ROOT = Path(__file__).resolve().parents[2]


@cache
def _crd_of(kind: str) -> dict[str, Any]:
    return crd(next(resource for resource in RESOURCES if resource.kind == kind))


def _crd(resource: Resource) -> dict[str, Any]:
    """Generated once per kind: the tests only read it."""
    return _crd_of(resource.kind)


def _version(resource: Resource) -> dict[str, Any]:
    versions: list[dict[str, Any]] = _crd(resource)["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def _schema(resource: Resource) -> dict[str, Any]:
    schema: dict[str, Any] = _version(resource)["schema"]["openAPIV3Schema"]
    return schema


def _nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object in the tree, with a readable path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _nodes(item, f"{path}[{index}]")


def _properties(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property schema (fields, array items, map values), recursively."""
    for name, prop in (node.get("properties") or {}).items():
        yield f"{path}.{name}", prop
        yield from _properties(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield f"{path}[]", node["items"]
        yield from _properties(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield f"{path}{{}}", node["additionalProperties"]
        yield from _properties(node["additionalProperties"], f"{path}{{}}")


@pytest.fixture(params=RESOURCES, ids=lambda resource: resource.kind)
def resource(request: pytest.FixtureRequest) -> Resource:
    value: Resource = request.param
    return value


def test_schema_has_no_refs_or_titles(resource: Resource) -> None:
    offenders = [path for path, node in _nodes(_schema(resource)) if "$ref" in node or "$defs" in node]
    offenders += [path for path, node in _nodes(_schema(resource)) if "title" in node]
    assert offenders == []


def test_schema_has_no_closed_objects(resource: Resource) -> None:
    """`additionalProperties: false` is not allowed next to `properties` in a structural schema."""
    assert [path for path, node in _nodes(_schema(resource)) if node.get("additionalProperties") is False] == []


def test_schema_has_no_null_types(resource: Resource) -> None:
    offenders = [
        path
        for path, node in _nodes(_schema(resource))
        if node.get("type") == "null" or "null" in (node.get("type") or []) or "nullable" in node
    ]
    offenders += [path for path, node in _nodes(_schema(resource)) if "default" in node and node["default"] is None]
    assert offenders == []


def test_every_property_is_typed(resource: Resource) -> None:
    untyped = [
        path
        for path, prop in _properties(_schema(resource))
        if "type" not in prop
        and not prop.get("x-kubernetes-int-or-string")
        and not prop.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert untyped == []


def test_any_of_appears_only_for_int_or_string(resource: Resource) -> None:
    offenders = [
        path
        for path, node in _nodes(_schema(resource))
        if ("anyOf" in node or "oneOf" in node or "allOf" in node) and not node.get("x-kubernetes-int-or-string")
    ]
    assert offenders == []


def test_quantities_are_int_or_string_with_the_quantity_pattern() -> None:
    cpu = _schema(TRAINING_JOB)["properties"]["spec"]["properties"]["resources"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True
    assert cpu["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "pattern" in cpu
    assert cpu["default"] == "2"


def test_training_job_spec_carries_its_cel_rules() -> None:
    rules = _schema(TRAINING_JOB)["properties"]["spec"]["x-kubernetes-validations"]
    messages = [rule["message"] for rule in rules]
    assert "spec.queue is immutable" in messages
    assert any("checkpoint.uri" in message for message in messages)


def test_inference_service_spec_carries_its_cel_rules() -> None:
    rules = _schema(INFERENCE_SERVICE)["properties"]["spec"]["x-kubernetes-validations"]
    assert "self.replicas.max >= self.replicas.min" in [rule["rule"] for rule in rules]


def test_model_source_carries_its_exactly_one_rule() -> None:
    model = _schema(INFERENCE_SERVICE)["properties"]["spec"]["properties"]["model"]
    assert "has(self.uri) != has(self.fromTrainingJob)" in [rule["rule"] for rule in model["x-kubernetes-validations"]]


def test_env_vars_carry_the_value_or_value_from_rule() -> None:
    env = _schema(TRAINING_JOB)["properties"]["spec"]["properties"]["env"]
    assert env["type"] == "array"
    assert "!(has(self.value) && has(self.valueFrom))" in [
        rule["rule"] for rule in env["items"]["x-kubernetes-validations"]
    ]


def test_required_fields_and_minimums_reach_the_schema() -> None:
    spec = _schema(TRAINING_JOB)["properties"]["spec"]
    assert "model" in spec["required"]
    assert spec["properties"]["workers"]["minimum"] == 1
    assert spec["properties"]["model"]["properties"]["output"]["pattern"].startswith("^(s3|pvc|file)://")


def test_enums_reach_the_schema() -> None:
    placement = _schema(INFERENCE_SERVICE)["properties"]["spec"]["properties"]["placement"]
    assert placement["type"] == "string"
    assert sorted(placement["enum"]) == ["auto", "cpu", "gpu"]
    assert placement["default"] == "cpu"


def test_descriptions_come_from_field_docstrings() -> None:
    spec = _schema(TRAINING_JOB)["properties"]["spec"]
    assert spec["properties"]["workers"]["description"] == TrainingJobSpec.model_fields["workers"].description
    assert "torch.distributed" in spec["properties"]["workers"]["description"]


def test_conditions_are_a_list_map_keyed_by_type(resource: Resource) -> None:
    conditions = _schema(resource)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_status_is_a_subresource(resource: Resource) -> None:
    assert _version(resource)["subresources"] == {"status": {}}


def test_names_short_names_and_category() -> None:
    names = {resource.kind: _crd(resource)["spec"]["names"] for resource in RESOURCES}
    assert names["TrainingJob"]["shortNames"] == ["tj"]
    assert names["InferenceService"]["shortNames"] == ["infsvc"]
    assert names["ComputePool"]["shortNames"] == ["cpool"]
    assert all(entry["categories"] == ["tandem"] for entry in names.values())


def test_scope() -> None:
    assert _crd(COMPUTE_POOL)["spec"]["scope"] == "Cluster"
    assert _crd(TRAINING_JOB)["spec"]["scope"] == "Namespaced"
    assert _crd(INFERENCE_SERVICE)["spec"]["scope"] == "Namespaced"


def test_training_job_printer_columns() -> None:
    columns = {column["name"]: column["jsonPath"] for column in _version(TRAINING_JOB)["additionalPrinterColumns"]}
    assert columns["Pool"] == ".status.pool"
    assert columns["Phase"] == ".status.phase"
    assert columns["Workers"] == ".spec.workers"
    assert columns["Model"] == ".status.model.uri"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_printer_columns_point_at_fields_the_schema_declares(resource: Resource) -> None:
    schema = _schema(resource)
    for column in _version(resource)["additionalPrinterColumns"]:
        node = schema
        for part in column["jsonPath"].lstrip(".").split("."):
            if part == "metadata" or (node.get("type") == "object" and "properties" not in node):
                break
            assert part in node["properties"], column["jsonPath"]
            node = node["properties"][part]


def test_openapi_schema_of_a_model_has_no_definitions_left() -> None:
    schema = openapi_schema(TrainingJobSpec)
    assert "$defs" not in schema
    assert schema["type"] == "object"


def test_generated_files_are_the_crds_as_yaml_in_both_folders() -> None:
    files = generated_files(REPO_ROOT)
    folders = {path.relative_to(REPO_ROOT).parent for path in files}
    assert {Path("manifests/crds"), Path("charts/tandem/crds")} <= folders
    content = files[REPO_ROOT / "manifests/crds/trainingjobs.tandem.dev.yaml"]
    assert yaml.load(content, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) == crd(TRAINING_JOB)


def test_committed_crds_match_the_models() -> None:
    """Regenerate with `tandem crds` after changing tandem.api."""
    assert drift(REPO_ROOT) == []
