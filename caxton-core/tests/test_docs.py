"""The plugin and configuration docs match the code (datasette's tests/test_docs.py idea).

Fails when a hookspec, a driver interface or one of its abstract methods, an entry-point
group, or a core config section or key is missing from docs/, documented with another
signature, type or default, or documented but gone from the code.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import types
from pathlib import Path
from typing import Any

import pytest

import caxton.drivers
import caxton.testing
from caxton import hookspecs
from caxton.config import (
    ALIASES,
    CORE_SECTIONS,
    ENV_ALIASES,
    NON_CONFIG_ENV,
    SECTION_ALIASES,
    ConfigSection,
    Field,
)
from caxton.plugins import HOOKS_GROUP, KINDS, PluginHost

DOCS = Path(__file__).resolve().parents[2] / "docs"
PLUGINS = DOCS / "plugins"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@functools.cache
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def split_sections(text: str, level: int) -> dict[str, str]:
    """Heading text -> body, for headings of exactly ``level`` outside code blocks."""
    marker = "#" * level + " "
    sections: dict[str, str] = {}
    current: str | None = None
    in_code = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith(marker):
            current = line[len(marker) :].strip()
            sections[current] = ""
        elif not in_code and current is not None and re.match(rf"^#{{1,{level}}} ", line):
            current = None  # a higher-level heading ends the section
        elif current is not None:
            sections[current] += line
    return sections


def code_blocks(text: str, language: str = "python") -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


class _Annotation:
    """Shows an annotation as written in the source (they are strings: PEP 563)."""

    def __init__(self, text: Any) -> None:
        self.text = text

    def __repr__(self) -> str:
        return str(self.text)


def signature_text(func: Any) -> str:
    """``(node: Node) -> None``: ``inspect.signature`` with annotations unquoted."""
    signature = inspect.signature(func)
    parameters = [
        p if p.annotation is p.empty else p.replace(annotation=_Annotation(p.annotation))
        for p in signature.parameters.values()
    ]
    returns = signature.return_annotation
    return str(
        signature.replace(
            parameters=parameters,
            return_annotation=returns if returns is signature.empty else _Annotation(returns),
        )
    )


def definition(name: str, func: Any) -> str:
    keyword = "async def" if inspect.iscoroutinefunction(func) else "def"
    return f"{keyword} {name}{signature_text(func)}"


# -------------------------------------------------------------------------
# Hooks
# -------------------------------------------------------------------------

HOOKSPECS = sorted(name for name in vars(hookspecs) if name.startswith("caxton_"))


def hook_sections() -> dict[str, str]:
    return split_sections(read(PLUGINS / "hooks.md"), 2)


def spec_opts(name: str) -> dict[str, Any]:
    host = PluginHost(use_entry_points=False, env={})
    opts: dict[str, Any] = getattr(host.pm.hook, name).spec.opts
    return opts


@pytest.mark.parametrize("name", HOOKSPECS)
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    assert name in hook_sections(), f"docs/plugins/hooks.md has no '## {name}' section"
    section = hook_sections()[name]
    blocks = code_blocks(section)
    assert blocks, f"## {name}: no python code block"
    expected = definition(name, getattr(hookspecs, name))
    assert blocks[0].strip() == expected, f"## {name}: signature should be\n{expected}"


@pytest.mark.parametrize("name", HOOKSPECS)
def test_hook_section_states_when_returns_and_an_example(name: str) -> None:
    section = hook_sections()[name]
    assert "**When:**" in section
    assert "**Returns:**" in section
    examples = [b for b in code_blocks(section)[1:] if "@hookimpl" in b]
    assert examples, f"## {name}: no example with @hookimpl"
    assert any(f"def {name}(" in b for b in examples)
    opts = spec_opts(name)
    assert ("**firstresult**" in section) == bool(opts["firstresult"]), name
    assert ("**historic**" in section) == bool(opts["historic"]), name
    if opts["firstresult"]:
        assert "stops at the first non-`none` result" in section.lower()


def test_hooks_doc_has_no_stale_sections() -> None:
    documented = {h for h in hook_sections() if h.startswith("caxton_")}
    assert documented == set(HOOKSPECS)


def test_hook_examples_register_and_validate() -> None:
    """Each example is a plugin pluggy accepts: right hook names, right arguments."""
    for name in HOOKSPECS:
        for block in code_blocks(hook_sections()[name])[1:]:
            module = types.ModuleType(f"example_{name}")
            exec(compile(block, f"hooks.md#{name}", "exec"), module.__dict__)
            host = PluginHost(use_entry_points=False, env={})
            host.register(module, name=module.__name__)
            host.check_hooks()
            assert name in host.hooks_of(module), f"the {name} example does not implement it"


# -------------------------------------------------------------------------
# Driver interfaces
# -------------------------------------------------------------------------

INTERFACES = sorted(
    name
    for name in caxton.drivers.__all__
    if inspect.isclass(getattr(caxton.drivers, name))
    and inspect.isabstract(getattr(caxton.drivers, name))
)


def driver_sections() -> dict[str, str]:
    return split_sections(read(PLUGINS / "drivers.md"), 2)


def test_the_interfaces_are_the_kinds_and_agent_instance() -> None:
    kinds = {kind.interface.__name__ for kind in KINDS.values()}
    assert set(INTERFACES) == kinds | {"AgentInstance"}


@pytest.mark.parametrize("interface", INTERFACES)
def test_interface_is_documented_method_by_method(interface: str) -> None:
    assert interface in driver_sections(), f"docs/plugins/drivers.md has no '## {interface}'"
    cls = getattr(caxton.drivers, interface)
    methods = split_sections(driver_sections()[interface], 3)
    # Abstract methods, and the optional ones the interface defines with a default.
    expected_methods = set(cls.__abstractmethods__) | {
        name for name, value in vars(cls).items() if callable(value) and name[0] != "_"
    }
    assert set(methods) == expected_methods, (
        f"## {interface}: sections {sorted(methods)} != methods {sorted(expected_methods)}"
    )
    for method in expected_methods:
        blocks = code_blocks(methods[method])
        assert blocks, f"{interface}.{method}: no python code block"
        expected = definition(method, getattr(cls, method))
        assert blocks[0].strip() == expected, f"{interface}.{method} should be\n{expected}"
        prose = FENCE.sub("", methods[method]).strip()
        assert len(prose) > 40, f"{interface}.{method}: describe its contract"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_driver_kind_section_names_its_group(kind: str) -> None:
    section = driver_sections()[KINDS[kind].interface.__name__]
    assert f"`{KINDS[kind].group}`" in section


def test_driver_base_is_documented() -> None:
    section = driver_sections()["Driver"]
    for member in ("config_section", "__init__", "start", "close", "DriverContext"):
        assert f"`{member}" in section or f"{member}(" in section, member


# -------------------------------------------------------------------------
# Entry-point groups and the plugin mechanisms
# -------------------------------------------------------------------------

GROUPS = sorted([kind.group for kind in KINDS.values()] + [HOOKS_GROUP])


@pytest.mark.parametrize("group", GROUPS)
def test_entry_point_group_is_documented(group: str) -> None:
    index = read(PLUGINS / "index.md")
    assert f"| `{group}` |" in index, f"docs/plugins/index.md lists no `{group}` row"


def test_index_documents_selection_blocking_strict_mode_and_errors() -> None:
    index = read(PLUGINS / "index.md")
    sections = split_sections(index, 2)
    for heading in (
        "Three mechanisms",
        "Entry-point groups",
        "Selecting drivers",
        "Blocking",
        "Strict mode",
        "Errors",
    ):
        assert heading in sections, heading
    for text in (
        "[plugins]",
        "--plugin transport=quic",
        "--plugin no:NAME",
        "--plugin my_package.hooks",
        "CAXTON_DISABLED_PLUGINS",
        "CAXTON_PLUGINS_STRICT",
        "--strict",
        "pip install caxton-transport-quic",
        "caxton plugins --json",
    ):
        assert text in index, text
    for kind in KINDS:
        assert f"`{kind}`" in sections["Selecting drivers"], kind


def test_plugins_json_keys_are_documented() -> None:
    from caxton.plugins import PluginInfo

    index = read(PLUGINS / "index.md")
    for key in PluginInfo("k", "n", None, None, "t").to_dict():
        assert f"`{key}`" in index, key


# -------------------------------------------------------------------------
# caxton.testing
# -------------------------------------------------------------------------


def test_testing_public_api_is_documented() -> None:
    testing = read(PLUGINS / "testing.md")
    for name in caxton.testing.__all__:
        assert f"`{name}`" in testing or f"## {name}" in testing, name
    for fixture in ("caxton_node_factory", "caxton_hook_recorder"):
        assert f"`{fixture}`" in testing, fixture
    for method in ("calls", "getcall", "popcall", "assert_called", "assert_not_called"):
        assert f"{method}(" in testing, method


# -------------------------------------------------------------------------
# Configuration
# -------------------------------------------------------------------------


def config_doc() -> str:
    return read(DOCS / "configuration.md")


ROW = re.compile(r"^\| `([a-z_]+)` \| ([^|]+) \| ([^|]+) \| (.+) \|$", re.MULTILINE)


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_cell(field: Field) -> str:
    return "unset" if field.default is None else f"`{toml_literal(field.default)}`"


def config_tables() -> dict[str, dict[str, tuple[str, str, str]]]:
    """Section path -> key -> (type, default, meaning) from ``### [path]`` tables."""
    tables: dict[str, dict[str, tuple[str, str, str]]] = {}
    for heading, body in split_sections(config_doc(), 3).items():
        match = re.fullmatch(r"`\[([a-z_.]+)\]`", heading)
        if match:
            tables[match.group(1)] = {
                key: (type_.strip(), default.strip(), meaning.strip())
                for key, type_, default, meaning in ROW.findall(body)
            }
    return tables


@pytest.mark.parametrize("section", CORE_SECTIONS, ids=lambda s: s.path)
def test_config_section_is_documented_key_by_key(section: ConfigSection) -> None:
    tables = config_tables()
    assert section.path in tables, f"docs/configuration.md has no '### `[{section.path}]`'"
    rows = tables[section.path]
    assert set(rows) == {f.name for f in section.fields}, section.path
    for field in section.fields:
        type_, default, meaning = rows[field.name]
        where = f"{section.path}.{field.name}"
        assert type_ == field.type, f"{where}: type {type_!r}, code says {field.type!r}"
        assert default == default_cell(field), f"{where}: default should be {default_cell(field)}"
        assert len(meaning) > 10, f"{where}: say what it means"
        for choice in field.choices or ():
            assert f"`{choice}`" in meaning, f"{where}: choice {choice!r} not listed"


def test_config_doc_marks_exactly_the_keys_that_do_nothing() -> None:
    """A † in docs/configuration.md for each core key of caxton.inert_keys, and only those."""
    from caxton.inert_keys import INERT_KEYS

    marked = {
        f"{path}.{key}"
        for path, rows in config_tables().items()
        for key, (_, _, meaning) in rows.items()
        if meaning.endswith("†")
    }
    core = {f"{s.path}.{f.name}" for s in CORE_SECTIONS for f in s.fields}
    assert marked == set(INERT_KEYS) & core


def test_config_doc_has_no_stale_sections() -> None:
    assert set(config_tables()) == {s.path for s in CORE_SECTIONS}


def test_config_aliases_and_environment_are_documented() -> None:
    for dotted in [*ALIASES, *ALIASES.values(), *SECTION_ALIASES]:
        assert f"`{dotted}`" in config_doc(), dotted
    for name in [*ENV_ALIASES, *NON_CONFIG_ENV]:
        assert f"`{name}" in config_doc(), name
    for text in ("${NAME}", "${NAME:-default}", "flags > environment > file > defaults"):
        assert text in config_doc(), text
    for unit in ("ms", "KB", "MB", "GB"):
        assert f"`{unit}`" in config_doc(), unit


# -------------------------------------------------------------------------
# Every code example parses
# -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted([*PLUGINS.glob("*.md"), DOCS / "configuration.md"]),
    ids=lambda p: p.name,
)
def test_python_and_toml_examples_parse(path: Path) -> None:
    import yaml

    from caxton.config import tomllib

    text = read(path)
    for block in code_blocks(text):
        if re.fullmatch(r"(async )?def \w+\(.*\) -> .+\n", block):
            block = block.rstrip("\n") + ": ..."  # a signature block
        ast.parse(block)
    for block in code_blocks(text, "toml"):
        tomllib.loads(block)
    for block in code_blocks(text, "yaml"):
        yaml.safe_load(block)
