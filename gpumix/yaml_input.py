"""YAML input files (plan files, devices files): parsed with the line of every key, validated by pydantic, and every
problem reported as one GpumixError naming file:line, the field and — where a close match exists — what was
probably meant."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from gpumix.errors import GpumixError

# ------------------------------------------------------------------------------------------- YAML with lines


class SourceLines:
    """Line numbers (1-based) of every mapping key and sequence item, by path."""

    def __init__(self) -> None:
        self.by_path: dict[tuple[Any, ...], int] = {}

    def line(self, loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            found = self.by_path.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: SourceLines, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise GpumixError(f"{source}:{line}: key {dotted((*path, key))!r} appears twice", hint="keep one")
            seen.add(key)
            lines.by_path[(*path, key)] = line
            _walk(value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.by_path[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, source)


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_yaml_with_lines(text: str, source: str) -> tuple[Any, SourceLines]:
    lines = SourceLines()
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, lines
            _walk(node, (), lines, source)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise GpumixError(f"{where}: not valid YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise GpumixError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise GpumixError(f"{source}: YAML nested too deeply") from None
    return data, lines


# ------------------------------------------------------------------------------------------- errors


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X | None`, `list[X]` or `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose fields live at `loc` under `root` (e.g. PlanSpec, ('services', 0) -> ServiceEntry).
    List indices and dict keys (prices: {RTX 4090: ...}) stay on the item's model."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, str) and part in model.model_fields:
            model = _inner_model(model.model_fields[part].annotation)
    return model


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def format_error(root: type[BaseModel], err: Any, lines: SourceLines, source: str) -> str:
    """One pydantic error as `file:line: field: message`."""
    loc = tuple(err["loc"])
    line = lines.line(loc)
    where = f"{source}:{line}" if line else source
    field = dotted(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        hint = did_you_mean(str(loc[-1]), allowed)
        return f"{where}: unknown key {field!r}{hint} (allowed here: {', '.join(allowed)})"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        options = [o.strip().strip("'") for o in str(expected).replace(" or ", ",").split(",") if o.strip()]
        return f"{where}: {field}: {err['input']!r} is not one of {expected}{did_you_mean(str(err['input']), options)}"
    if kind == "missing":
        return f"{where}: {field}: required key missing"
    msg = err["msg"].removeprefix("Value error, ")
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if isinstance(err.get("input"), dict | list):
        return f"{where}: {field}: {msg}"
    return f"{where}: {field}: {msg} (got {shown})"




def validation_error(root: type[BaseModel], exc: ValidationError, lines: SourceLines, source: str,
                     hint: str | None = None) -> GpumixError:  # fmt: skip
    """The first problem of a validation error (and how many more), as a GpumixError."""
    errors = exc.errors(include_url=False)
    first = format_error(root, errors[0], lines, source)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return GpumixError(first + more, hint=hint)


def located_error(source: str, lines: SourceLines, loc: tuple, message: str, hint: str | None = None) -> GpumixError:
    """A GpumixError for a problem found after validation (an unknown card name ...), at `loc` in the file."""
    line = lines.line(loc)
    where = f"{source}:{line}" if line else source
    return GpumixError(f"{where}: {dotted(loc)}: {message}", hint=hint)
