"""Reading settings into a tree of dataclasses, whatever its schema: YAML mappings and dotted
`section.key=value` overrides, each value coerced to its field's type, with one-line errors that
name the key. `fastvlmrl.config` holds the schema and its checks."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration the user can fix: the message says how."""


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value, kind, key: str):
    """value (from YAML or an override string) as `kind`, or a ConfigError naming the key."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = typing.get_args(kind)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {kind}")


def set_value(cfg, dotted: str, value) -> None:
    """cfg.<section>.<name> = value coerced to the field's type (`dotted` is 'section.name')."""
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"unknown config key {dotted!r}: keys look like section.name, e.g. ppo.clip")
    section_name, name = parts
    sections = {f.name for f in dataclasses.fields(cfg)}
    if section_name not in sections:
        raise ConfigError(f"unknown config section {section_name!r} in {dotted!r}{_did_you_mean(section_name, sections)}: "
                          f"choose one of {', '.join(sorted(sections))}")
    section = getattr(cfg, section_name)
    kinds = _field_types(type(section))
    if name not in kinds:
        near = _did_you_mean(name, kinds, prefix=section_name + ".")
        raise ConfigError(f"unknown config key {dotted!r}{near}: {section_name} has {', '.join(kinds)}")
    setattr(section, name, _coerce(value, kinds[name], dotted))


def _did_you_mean(name: str, options, prefix: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def field_docs(cls) -> dict[str, str]:
    """Each field's one-line doc: the comment after it in the dataclass's source (the schema
    documents itself where it is defined)."""
    import inspect
    import re

    docs = {}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return docs
    for line in source.splitlines():
        match = re.match(r"\s+(\w+):[^#]*?(?:#\s*(.*))?$", line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            docs[match.group(1)] = (match.group(2) or "").strip()
    return docs


def describe_config(cfg) -> list[str]:
    """Every key as `section.name: value  # doc`, in schema order."""
    lines = []
    for section_field in dataclasses.fields(cfg):
        section = getattr(cfg, section_field.name)
        docs = field_docs(type(section))
        for f in dataclasses.fields(section):
            value = yaml.safe_dump(getattr(section, f.name), default_flow_style=True).strip().removesuffix("...").strip()
            doc = docs.get(f.name, "")
            lines.append(f"{section_field.name}.{f.name}: {value}" + (f"  # {doc}" if doc else ""))
    return lines


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_override(text: str) -> tuple[str, object]:
    """'ppo.clip=0.2' -> ('ppo.clip', 0.2); the value is read as YAML (numbers, true/false, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. ppo.clip=0.2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path) -> dict[str, object]:
    """A YAML config file as dotted keys ('ppo.clip': 0.2)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return _flatten(tree)
