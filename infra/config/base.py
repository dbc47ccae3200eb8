"""The base of every config node."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every config node: unknown keys are errors, assignments are re-validated, and each
    field's docstring becomes its description (the schema and the docs read it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
