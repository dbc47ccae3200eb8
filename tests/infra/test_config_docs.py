"""Every field of the config tree has a docstring (it becomes the field's description)."""

from __future__ import annotations

import typing

from pydantic import BaseModel

from infra.config import Config


def config_nodes(model: type[BaseModel], seen: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``model`` through its fields' annotations."""
    seen[model.__name__] = model
    for field in model.model_fields.values():
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner.__name__ not in seen:
                    config_nodes(inner, seen)
    return seen


def test_every_config_field_has_a_docstring():
    nodes = config_nodes(Config, {})
    assert {"Config", "ModelConfig", "DiffusersConfig", "LearnerConfig", "PoolConfig", "RewardSpec"} <= set(nodes)
    missing = [f"{name}.{field}" for name, node in nodes.items() for field, info in node.model_fields.items()
               if not (info.description or "").strip()]
    assert missing == [], f"fields without a docstring: {missing}"


def test_the_configuration_reference_in_docs_is_the_generated_one():
    from pathlib import Path

    from pipelines.config_reference import render_reference

    page = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert page.read_text() == render_reference(), "regenerate: paretoslider config-reference > docs/configuration.md"
    assert "`learner.adam_eps`" in page.read_text() and "`rewards.objectives[].name`" in page.read_text()
