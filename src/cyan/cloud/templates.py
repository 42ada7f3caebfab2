"""Mustache templates as Particle's webhooks use them (https://mustache.github.io/mustache.5.html).

What is supported: variables ``{{name}}`` (HTML-escaped: ``& < > " '``), ``{{{name}}}`` and ``{{&name}}``
(as they are), dotted names with list indexes (``results.0.location.lat``), the implicit iterator ``{{.}}``,
sections ``{{#name}}...{{/name}}`` (skipped when false, empty or missing; repeated for each item of a list),
inverted sections ``{{^name}}...{{/name}}`` and comments ``{{! ...}}``. Partials and changed delimiters are
refused when the template is compiled: a webhook has nothing to include, and its owner learns at once.

A template comes from an account and the values from its devices, so both are bounded: the template's size and
nesting when it is compiled, the output when it is rendered (`TemplateError`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_OUTPUT", "MAX_TEMPLATE", "Template", "TemplateError", "compile_template", "render"]

#: The longest template taken (bytes of UTF-8).
MAX_TEMPLATE = 16 * 1024
#: Sections inside sections.
MAX_DEPTH = 16
#: The longest output (characters): a section over a long list of the device's data must not grow past it.
MAX_OUTPUT = 64 * 1024

_TAG = re.compile(r"\{\{(\{?)(.*?)(\}?)\}\}", re.DOTALL)
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_ESCAPED = re.compile("[&<>\"']")


class TemplateError(ValueError):
    """The template cannot be compiled or rendered; the message says where and why."""


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str
    escape: bool


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    inverted: bool
    body: tuple[_Node, ...]


_Node = _Text | _Variable | _Section


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template: render it as often as needed."""

    source: str
    nodes: tuple[_Node, ...]

    def render(self, context: Mapping[str, Any], *, limit: int = MAX_OUTPUT) -> str:
        out: list[str] = []
        _Renderer(out, limit).nodes(self.nodes, [context])
        return "".join(out)


def compile_template(source: str) -> Template:
    """Parse `source`; `TemplateError` for an unclosed tag or section, a partial, a delimiter change, or a
    template over `MAX_TEMPLATE` bytes or `MAX_DEPTH` sections deep."""
    if len(source.encode()) > MAX_TEMPLATE:
        raise TemplateError(f"the template is over {MAX_TEMPLATE} bytes")
    stack: list[tuple[str, bool, list[_Node]]] = []
    current: list[_Node] = []
    position = 0
    for match in _TAG.finditer(source):
        if match.start() > position:
            current.append(_Text(source[position : match.start()]))
        position = match.end()
        opening, inner, closing = match.group(1), match.group(2), match.group(3)
        if opening == "{":
            if closing != "}":
                raise TemplateError(f"the tag at character {match.start()} opens with {{{{{{ but ends with }}}}")
            current.append(_Variable(_name(inner, match.start()), escape=False))
            continue
        # "{{x}}}": the match took one brace too many; it is text after the tag.
        trailing = [_Text(closing)] if closing else []
        kind, name = inner[:1], inner[1:]
        if kind == "!":
            current += trailing
            continue
        if kind in ("#", "^"):
            if len(stack) >= MAX_DEPTH:
                raise TemplateError(f"sections are nested more than {MAX_DEPTH} deep")
            stack.append((_name(name, match.start()), kind == "^", current))
            current = []
        elif kind == "/":
            closed = _name(name, match.start())
            if not stack:
                raise TemplateError(f"{{{{/{closed}}}}} at character {match.start()} closes no section")
            opened, inverted, parent = stack.pop()
            if opened != closed:
                raise TemplateError(f"{{{{/{closed}}}}} at character {match.start()} closes the section {opened!r}")
            parent.append(_Section(opened, inverted, tuple(current)))
            current = parent
        elif kind == "&":
            current.append(_Variable(_name(name, match.start()), escape=False))
        elif kind in (">", "<"):
            raise TemplateError(f"partials ({{{{>...}}}}) are not supported (character {match.start()})")
        elif kind == "=":
            raise TemplateError(f"changing the delimiters ({{{{=...=}}}}) is not supported (character {match.start()})")
        else:
            current.append(_Variable(_name(inner, match.start()), escape=True))
        current += trailing
    if "{{" in source[position:]:
        raise TemplateError(f"the tag at character {source.index('{{', position)} is not closed")
    if position < len(source):
        current.append(_Text(source[position:]))
    if stack:
        raise TemplateError(f"the section {stack[-1][0]!r} is not closed")
    return Template(source, tuple(current))


def render(source: str, context: Mapping[str, Any], *, limit: int = MAX_OUTPUT) -> str:
    """Compile and render in one step."""
    return compile_template(source).render(context, limit=limit)


def _name(text: str, at: int) -> str:
    name = text.strip()
    if not name:
        raise TemplateError(f"the tag at character {at} names nothing")
    if any(ch in name for ch in "{}") or not name.isprintable():
        raise TemplateError(f"the tag at character {at} has a name that is not one: {name[:40]!r}")
    return name


class _Missing:
    """A name that resolves to nothing (distinct from a value that is None)."""


_MISSING = _Missing()


class _Renderer:
    __slots__ = ("limit", "out", "size")

    def __init__(self, out: list[str], limit: int) -> None:
        self.out = out
        self.limit = limit
        self.size = 0

    def write(self, text: str) -> None:
        self.size += len(text)
        if self.size > self.limit:
            raise TemplateError(f"the template rendered more than {self.limit} characters")
        self.out.append(text)

    def nodes(self, nodes: Sequence[_Node], stack: list[Any]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.write(node.text)
            elif isinstance(node, _Variable):
                value = _lookup(node.name, stack)
                text = "" if isinstance(value, _Missing) else _text(value)
                self.write(_ESCAPED.sub(lambda m: _ESCAPES[m.group()], text) if node.escape else text)
            else:
                self.section(node, stack)

    def section(self, node: _Section, stack: list[Any]) -> None:
        value = _lookup(node.name, stack)
        # What JavaScript takes for false, as mustache.js does: missing, null, false, 0, "", and an empty list.
        empty = isinstance(value, _Missing) or value is None or value in (False, 0, "", [])
        if node.inverted:
            if empty:
                self.nodes(node.body, stack)
            return
        if empty:
            return
        if isinstance(value, list):
            for item in value:
                self.nodes(node.body, [*stack, item])
        else:
            self.nodes(node.body, [*stack, value])


def _lookup(name: str, stack: list[Any]) -> Any:
    if name == ".":
        return stack[-1]
    first, *rest = name.split(".")
    # The first part is looked up from the innermost context out; the rest only inside what it found.
    for frame in reversed(stack):
        found = _child(frame, first)
        if not isinstance(found, _Missing):
            break
    else:
        return _MISSING
    for part in rest:
        found = _child(found, part)
        if isinstance(found, _Missing):
            return found
    return found


def _child(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(key, _MISSING)
    if isinstance(value, list) and key.isdigit() and len(key) < 10:
        index = int(key)
        return value[index] if index < len(value) else _MISSING
    return _MISSING


def _text(value: Any) -> str:
    """A value as text, as JavaScript prints it where it can: true/false, 20 for 20.0; objects and lists as
    JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, int | str):
        return str(value)
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
