"""Reading settings into a tree of dataclasses, whatever its schema, with OmegaConf: the schema
becomes a structured config, a YAML file and `section.key=value` dot-list overrides (what verl,
verl-agent and Hydra users type) are merged onto it, OmegaConf coerces each value to its field's
type, and its multi-line errors become one line that names the key. Interpolations work
(`ppo.value_lr=${ppo.lr}`). `fastvlmrl.config` holds the schema and its checks."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A configuration the user can fix: the message says how."""


def read_settings(schema: type, path: str | Path | None = None, overrides: typing.Sequence[str] = ()):
    """An instance of the dataclass `schema`: its defaults, then the YAML file (if any), then each
    override in order (a later one wins). Raises ConfigError with one line on any bad key or value."""
    merged = OmegaConf.structured(schema)
    layers = ([] if path is None else [(f"config file {str(path)!r}", read_yaml(path))])
    layers += [(f"override {text!r}", parse_override(text)) for text in overrides]
    for origin, layer in layers:
        layer = _strict_values(schema, layer)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(_one_line(e, schema, origin)) from None
    try:
        return OmegaConf.to_object(merged)  # interpolations resolve here
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e, schema, "the settings")) from None


def read_yaml(path: str | Path) -> DictConfig:
    """A YAML config file as an OmegaConf tree ({section: {key: value}})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        tree = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return tree


def parse_override(text: str) -> DictConfig:
    """'ppo.clip=0.2' as an OmegaConf tree {ppo: {clip: 0.2}}; the value is read as YAML (numbers,
    true/false, null), everything after the first '=' is the value."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. ppo.clip=0.2")
    if len(key.strip().split(".")) != 2:
        raise ConfigError(f"unknown config key {key.strip()!r}: keys look like section.name, e.g. ppo.clip")
    try:
        return OmegaConf.from_dotlist([f"{key.strip()}={value.strip()}"])
    except OmegaConfBaseException as e:
        raise ConfigError(f"override {text!r}: {str(e).splitlines()[0]}") from None


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _strict_values(schema: type, layer: DictConfig) -> DictConfig:
    """The layer's values as the schema's fields take them, where OmegaConf is looser or stricter
    than a user expects: a whole number written as a float (`2.0`, `1e3`) for an integer field,
    `none` for an optional one; a number for a boolean (`model.lora=2`) or a boolean for a string
    (`env.name=true`) is refused. Interpolations (`${...}`) are left to OmegaConf."""
    sections = typing.get_type_hints(schema)
    tree = OmegaConf.to_container(layer, resolve=False)
    for section, values in tree.items():
        if section not in sections or not isinstance(values, dict):
            continue  # OmegaConf's merge reports these
        kinds = _field_types(sections[section])
        for name, value in values.items():
            kind = kinds.get(name)
            if kind is None or (isinstance(value, str) and value.startswith("${")):
                continue
            options = [k for k in typing.get_args(kind) or (kind,) if k is not type(None)]
            optional = type(None) in typing.get_args(kind)
            key = f"{section}.{name}"
            if optional and isinstance(value, str) and value.lower() in ("none", "null"):
                values[name] = None
            elif int in options and isinstance(value, float) and value.is_integer():
                values[name] = int(value)
            elif bool in options and not isinstance(value, (bool, str)) and value is not None:
                raise ConfigError(f"{key} must be true or false, got {value!r}")
            elif options == [str] and isinstance(value, bool):
                raise ConfigError(f"{key} must be a string, got {value!r}")
    return OmegaConf.create(tree)


def _one_line(error: OmegaConfBaseException, schema: type, origin: str) -> str:
    """OmegaConf's error as one line in the project's words: what key, what is wrong, what to do."""
    key = error.full_key or ""
    section, _, name = key.partition(".")
    sections = {f.name: f for f in dataclasses.fields(schema)}
    first_line = str(error).splitlines()[0]
    merge = re.search(r"is not a subclass of (\w+)", first_line)  # a value where a section belongs
    if not key and merge:
        hints = typing.get_type_hints(schema)
        section = next((n for n in sections if getattr(hints[n], "__name__", "") == merge.group(1)), "")
    if isinstance(error, ConfigKeyError) and section not in sections:
        near = _did_you_mean(section, sections)
        return (f"unknown config section {section!r} in {origin}{near}: choose one of {', '.join(sorted(sections))}")
    if isinstance(error, ConfigKeyError):
        fields = _field_types(typing.get_type_hints(schema)[section])
        near = _did_you_mean(name.split(".")[0], fields, prefix=section + ".")
        return f"unknown config key {key!r}{near}: {section} has {', '.join(fields)}"
    if isinstance(error, ValidationError) and section in sections and name:
        kind = _field_types(typing.get_type_hints(schema)[section]).get(name.split(".")[0])
        value = re.match(r"Value '(.*?)'(?: of type| is not)", first_line)
        if "DictConfig" in first_line:
            return f"{key} is one setting, not a section ({origin}): keys look like section.name, e.g. ppo.clip"
        words = " or ".join(_KIND_WORDS[k] for k in typing.get_args(kind) or (kind,) if k in _KIND_WORDS)
        if words:
            got = value.group(1) if value else "?"
            return f"{key} must be {words}, got {got!r}"
    if section in sections and not name and ("Merge error" in first_line or isinstance(error, ValidationError)):
        return f"{section} in {origin} must be a mapping of its keys (e.g. {section}: {{...}}), not a value"
    return f"{key or origin}: {first_line}"


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _did_you_mean(name: str, options, prefix: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def field_docs(cls) -> dict[str, str]:
    """Each field's one-line doc: the comment after it in the dataclass's source (the schema
    documents itself where it is defined)."""
    import inspect

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
