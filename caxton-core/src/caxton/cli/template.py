"""``caxton plugin new KIND NAME``: a complete, tested plugin package to start from.

The templates live in ``caxton/templates/plugin/``: ``common/`` for every kind, then one
directory per kind. Paths and contents are :class:`string.Template` text (``${name}``;
``$$`` for a literal dollar); ``__package__`` in a path becomes the import package and
the ``.tmpl`` suffix is dropped.
"""

from __future__ import annotations

import re
import string
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import click

from caxton import __version__
from caxton.errors import ValidationError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

TEMPLATE_ROOT = "templates/plugin"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class PluginKind:
    """What ``caxton plugin new`` generates for one kind."""

    kind: str
    group: str
    #: Module of the generated package holding the plugin, and the class suffix.
    module: str
    class_suffix: str
    summary: str
    what: str
    #: Conformance suite in :mod:`caxton.testing` the generated tests subclass.
    conformance: str | None
    #: Distributions the generated package needs besides caxton-core.
    requires: tuple[str, ...] = ()

    @property
    def is_driver(self) -> bool:
        return self.kind != "hooks"


PLUGIN_KINDS: dict[str, PluginKind] = {
    k.kind: k
    for k in (
        PluginKind(
            "placement",
            "caxton.placement",
            "strategy",
            "Placement",
            "A Caxton placement strategy",
            "a least-loaded strategy with a per-node agent limit; replace its ranking.",
            "PlacementConformance",
        ),
        PluginKind(
            "partition_policy",
            "caxton.partition_policy",
            "policy",
            "Policy",
            "A Caxton partition policy",
            "a quorum policy with a configurable minority mode; replace its decision.",
            "PartitionPolicyConformance",
        ),
        PluginKind(
            "auth",
            "caxton.auth",
            "auth",
            "Auth",
            "A Caxton auth driver",
            "a shared-token header check; replace it with your scheme.",
            "AuthConformance",
        ),
        PluginKind(
            "membership",
            "caxton.membership",
            "membership",
            "Membership",
            "A Caxton membership driver",
            "core's static membership with a seed allowlist; or write your own discovery.",
            "MembershipConformance",
        ),
        PluginKind(
            "transport",
            "caxton.transport",
            "transport",
            "Transport",
            "A Caxton transport",
            "caxton-transport-tcp's transport with a peer allowlist; or write your own wire.",
            "TransportConformance",
            requires=("caxton-transport-tcp",),
        ),
        PluginKind(
            "sandbox",
            "caxton.sandbox",
            "sandbox",
            "Sandbox",
            "A Caxton sandbox",
            "core's wasmtime engine plus a module size limit; swap in your engine.",
            "SandboxConformance",
        ),
        PluginKind(
            "hooks",
            "caxton.hooks",
            "hooks",
            "",
            "A Caxton hook plugin",
            "a hook module logging node start, counting agent events and serving a REST route.",
            None,
        ),
    )
}
#: Spellings accepted on the command line besides the kind names.
KIND_ALIASES = {"partition-policy": "partition_policy", "partition": "partition_policy"}


def distribution_name(name: str) -> str:
    return name if name.startswith("caxton-") else f"caxton-{name}"


def template_values(kind: PluginKind, name: str) -> dict[str, str]:
    """Everything the templates of ``kind`` may refer to."""
    dist = distribution_name(name)
    package = dist.replace("-", "_")
    base = "".join(part.capitalize() for part in name.split("-"))
    cls = base if base.endswith(kind.class_suffix) else base + kind.class_suffix
    target = f"{package}.{kind.module}" + (f":{cls}" if kind.is_driver else "")
    cli_kind = kind.kind
    if kind.is_driver:
        selection = f"the value of --plugin {cli_kind}={name} and [plugins] {cli_kind}"
        usage = f"$ caxton server start --plugin {cli_kind}={name}"
        testing_note = (
            f"The tests subclass Caxton's conformance suite for this kind "
            f"(`caxton.testing.{kind.conformance}`): keep it passing as you change "
            f"`src/{package}/{kind.module}.py`."
        )
        if kind.kind == "sandbox":
            testing_note += (
                " The sandbox suite runs Caxton's example agents: outside a Caxton checkout,"
                " set CAXTON_EXAMPLES_DIR to a checkout's examples/agents (building them"
                " needs clang, lld and wasi-libc)."
            )
    else:
        selection = f"the name --plugin no:{name} blocks"
        usage = (
            f"$ caxton server start    # the plugin is active whenever installed\n"
            f"$ caxton server start --plugin no:{name}    # switched off"
        )
        testing_note = (
            "The tests check the hook implementations against Caxton's hookspecs and "
            "start a real node to see the plugin discovered and its route served."
        )
    major, _, rest = __version__.partition(".")
    minor = rest.partition(".")[0]
    core_version = f"{major}.{minor}" if major.isdigit() and minor.isdigit() else "0.2"
    return {
        "name": name,
        "kind": cli_kind,
        "dist": dist,
        "package": package,
        "cls": cls,
        "group": kind.group,
        "target": target,
        "module_path": f"src/{package}/{kind.module}.py",
        "summary": f"{kind.summary}: {name}",
        "what": kind.what,
        "selection_help": selection,
        "usage": usage,
        "testing_note": testing_note,
        "core_version": core_version,
        "dependencies": ", ".join(
            f'"{dist}>={core_version}"' for dist in ("caxton-core", *kind.requires)
        ),
    }


def _walk(directory: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    found: list[tuple[str, Traversable]] = []
    for entry in sorted(directory.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        relative = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.extend(_walk(entry, relative + "/"))
        elif entry.name.endswith(".tmpl"):
            found.append((relative.removesuffix(".tmpl"), entry))
    return found


def render_plugin(kind_name: str, name: str, output: Path) -> Path:
    """Write the package for plugin ``name`` of ``kind_name`` under ``output``.

    Returns the package directory. Raises :class:`ValidationError` for an unknown kind,
    a name that is not a valid entry-point name, or a directory that already exists.
    """
    kind_name = KIND_ALIASES.get(kind_name, kind_name)
    kind = PLUGIN_KINDS.get(kind_name)
    if kind is None:
        raise ValidationError(
            f"unknown plugin kind '{kind_name}' (kinds: {', '.join(PLUGIN_KINDS)})"
        )
    if not NAME_PATTERN.match(name):
        raise ValidationError(
            f"plugin name '{name}' is not valid: use lowercase letters, digits and single "
            f"hyphens, starting with a letter (for example 'zone-aware')"
        )
    values = template_values(kind, name)
    target = output / values["dist"]
    if target.exists() and any(target.iterdir()):
        raise ValidationError(f"{target} already exists and is not empty; choose another --output")
    root = files("caxton").joinpath(TEMPLATE_ROOT)
    for source_dir in (root.joinpath("common"), root.joinpath(kind.kind)):
        for relative, entry in _walk(source_dir):
            path = target / relative.replace("__package__", values["package"])
            path.parent.mkdir(parents=True, exist_ok=True)
            text = string.Template(entry.read_text(encoding="utf-8")).substitute(values)
            path.write_text(text, encoding="utf-8")
    return target


@click.group("plugin")
def plugin() -> None:
    """Write your own plugin."""


@plugin.command("new")
@click.argument("kind", metavar="KIND")
@click.argument("name")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to create the package in.",
)
def new(kind: str, name: str, output: Path) -> None:
    """Create package caxton-NAME: a KIND plugin with tests that pass.

    KIND is one of: placement, partition_policy, auth, membership, transport, sandbox,
    hooks.
    """
    target = render_plugin(kind, name, output)
    values = template_values(PLUGIN_KINDS[KIND_ALIASES.get(kind, kind)], name)
    click.echo(f"created {target} ({values['dist']}, entry point {values['group']}:{name})")
    click.echo(f"next: pip install -e '{target}[test]' && python -m pytest {target}")
