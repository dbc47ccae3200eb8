"""Loading a config: YAML presets, dotted ``--set`` overrides, errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infra.config.job import Config


MOVED_FIELDS = {"preferences.sweep_points": "evaluation.points_per_edge",
                "loop.eval_samples": "evaluation.num_samples"}
"""Removed fields and the one that replaces each: a config that still sets one fails naming it."""


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field and what is allowed."""


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and loc in MOVED_FIELDS:
            msg = (f"removed; set {MOVED_FIELDS[loc]} instead (the evaluation section sets every sweep: "
                   "training's final sweep, evaluate and compare)")
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        lines.append(f"  {loc}: {msg} (got {e.get('input')!r})")
    return "invalid config:\n" + "\n".join(lines)


def _parse_value(raw: str) -> Any:
    """Parse an override's value as YAML, so ``1e-4``, ``true``, ``[1, 2]`` and ``null`` work."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_override(tree: dict[str, Any], dotted: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict in place."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}' must look like key.path=value")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{dotted}': empty part in key path '{key}'")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is a value, not a section")
        node = nxt
    node[parts[-1]] = _parse_value(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML preset (or the embedded defaults), apply dotted overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        tree = loaded
    for o in overrides or []:
        apply_override(tree, o)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (saved with every run and logged to MLflow)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flat_params(cfg: Config) -> dict[str, str]:
    """The resolved config flattened to dotted keys, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(node)[:500]

    walk("", cfg.model_dump(mode="json"))
    return out
