"""The base every API model shares: camelCase on the wire, snake_case in Python.

Kubernetes API conventions name fields in camelCase; Python code reads better in snake_case. One alias
generator keeps both true without a hand-written alias per field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """A strict wire model: unknown fields are refused, so typos surface as errors rather than no-ops."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, object]:
        """The JSON-ready dict with camelCase keys and unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
