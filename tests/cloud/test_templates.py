"""Mustache as webhooks use it: the examples of Particle's webhook reference, and what a hostile template or
hostile data cannot do."""

from __future__ import annotations

from typing import Any

import pytest

from cyan.cloud.templates import MAX_DEPTH, MAX_TEMPLATE, TemplateError, compile_template, render

#: The data of Particle's "Variable substitution" example.
DATA: dict[str, Any] = {
    "a": {"aa": "testing", "ab": 1234},
    "b": "xxx",
    "c": [{"ca": "first", "cb": 123}, {"ca": "second", "cb": 456}],
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{{a.aa}}}", "testing"),
        ("{{{a.ab}}}", "1234"),
        ("{{{b}}}", "xxx"),
        ("{{{c.0.ca}}}", "first"),
        ("{{{c.1.cb}}}", "456"),
        ("{{#b}}{{{b}}}{{/b}}{{^b}}Missing{{/b}}", "xxx"),
        ("{{#z}}{{{z}}}{{/z}}{{^z}}Missing{{/z}}", "Missing"),
        ("{{#c}}{{{ca}}}~{{/c}}", "first~second~"),
    ],
)
def test_the_examples_of_particles_webhook_reference(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


def test_double_braces_escape_html_and_triple_braces_or_ampersand_do_not() -> None:
    value = {"v": '<a href="x">Tom & Jerry\'s</a>'}
    assert render("{{v}}", value) == "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
    assert render("{{{v}}}", value) == value["v"]
    assert render("{{& v }}", value) == value["v"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (20.0, "20"),
        (21.5, "21.5"),
        (2**63, "9223372036854775808"),
        ([1, "x"], '[1,"x"]'),
        ({"k": None}, '{"k":null}'),
    ],
)
def test_values_print_as_javascript_would(value: object, shown: str) -> None:
    assert render("{{{v}}}", {"v": value}) == shown


@pytest.mark.parametrize("falsy", [None, False, 0, "", []])
def test_sections_skip_what_javascript_takes_for_false(falsy: object) -> None:
    assert render("{{#v}}yes{{/v}}{{^v}}no{{/v}}", {"v": falsy}) == "no"


def test_sections_repeat_lists_enter_objects_and_see_the_outer_context() -> None:
    context = {"items": [{"n": 1}, {"n": 2}], "unit": "C", "obj": {"x": "in"}, "names": ["a", "b"]}
    assert render("{{#items}}{{n}}{{unit}} {{/items}}", context) == "1C 2C "
    assert render("{{#obj}}{{x}}/{{unit}}{{/obj}}", context) == "in/C"
    assert render("{{#names}}<{{.}}>{{/names}}", context) == "<a><b>"
    assert render("{{#unit}}[{{.}}]{{/unit}}", context) == "[C]"


def test_missing_names_render_empty_and_comments_disappear() -> None:
    assert render("a{{nothing}}b{{no.such.path}}c{{c.9.ca}}d{{! a comment }}e", DATA) == "abcde"
    assert render("{{a.aa.deeper}}|{{b.0}}|{{c.x}}", DATA) == "||"


def test_a_brace_after_a_tag_is_text() -> None:
    assert render("{{b}}}", DATA) == "xxx}"
    assert render("{{#b}}}{{/b}}", DATA) == "}"
    assert render("x{{!c}}}", DATA) == "x}"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{#a}}never closed", "not closed"),
        ("{{/a}}", "closes no section"),
        ("{{#a}}{{/b}}", "closes the section 'a'"),
        ("{{> partial}}", "partials"),
        ("{{=<% %>=}}", "delimiters"),
        ("{{}}", "names nothing"),
        ("{{{x}}", "ends with"),
        ("text {{unclosed", "not closed"),
        ("{{a\nb}}", "not one"),
    ],
)
def test_templates_that_cannot_be_compiled_say_why(template: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=reason):
        compile_template(template)


def test_size_nesting_and_output_are_bounded() -> None:
    with pytest.raises(TemplateError, match="over"):
        compile_template("x" * (MAX_TEMPLATE + 1))
    deep = "{{#a}}" * (MAX_DEPTH + 1) + "{{/a}}" * (MAX_DEPTH + 1)
    with pytest.raises(TemplateError, match="nested"):
        compile_template(deep)
    # A section over a long list of the device's data grows the output: it stops at the limit.
    with pytest.raises(TemplateError, match="more than 100 characters"):
        render("{{#l}}{{.}}{{/l}}", {"l": ["x" * 10] * 11}, limit=100)
    assert render("{{#l}}{{.}}{{/l}}", {"l": ["x" * 10] * 10}, limit=100) == "x" * 100


def test_a_compiled_template_renders_many_contexts() -> None:
    template = compile_template("{{PARTICLE_EVENT_NAME}}={{{PARTICLE_EVENT_VALUE}}}")
    assert template.render({"PARTICLE_EVENT_NAME": "t", "PARTICLE_EVENT_VALUE": "1"}) == "t=1"
    assert template.render({"PARTICLE_EVENT_NAME": "u", "PARTICLE_EVENT_VALUE": "<2>"}) == "u=<2>"
