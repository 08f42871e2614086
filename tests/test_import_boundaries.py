"""Which package may import which (docs/architecture.md): checked over the source tree with ``ast``.

Every ``import`` and ``from ... import`` counts, also those inside functions and under ``TYPE_CHECKING``:
a lazy import still ties the two rooms together.  The rules are the ones docs/architecture.md draws:

- the engine (``mpc_core``) imports only itself and the generated peer API (``proto``);
- a nonlinear function (``mpc_core.functions``) never names a concrete suite, only the suite interface;
- ``contract`` (what the roles share) imports only the engine and ``proto``; ``proto`` only itself;
- the data owner, the model owner and the party process (``server``) never import one another, nor the
  operator tooling (``cluster_ops``) or the benchmarks; the one exception is the data owner's
  all-roles demo, which shares a model and starts a local cluster.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mpc_core", "proto", "contract", "server", "cluster_ops", "data_owner", "model_owner", "bench")

#: importer prefix -> module prefixes it must not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mpc_core": ("contract", "server", "cluster_ops", "data_owner", "model_owner", "bench"),
    "proto": ("mpc_core", "contract", "server", "cluster_ops", "data_owner", "model_owner", "bench"),
    "contract": ("server", "cluster_ops", "data_owner", "model_owner", "bench"),
    "server": ("data_owner", "model_owner", "cluster_ops", "bench"),
    "data_owner": ("server", "model_owner", "cluster_ops", "bench"),
    "model_owner": ("server", "data_owner", "cluster_ops", "bench"),
    "cluster_ops": ("server", "model_owner", "bench"),
}
#: (importer module, imported prefix) pairs allowed despite FORBIDDEN, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("data_owner.demo", "model_owner"): "the demo plays every role: it shares the bundled model",
    ("data_owner.demo", "cluster_ops"): "the demo plays every role: it starts a local cluster",
}
#: Suite modules a nonlinear function may import: the interfaces, not a protocol or the registry.
SUITE_INTERFACES = ("mpc_core.suites.base", "mpc_core.suites.correlations")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in a file; ``from a import b`` names ``a.b`` when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the importing package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if is_module(full, root) else base


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """Every import in the packages under ``root`` that crosses a forbidden boundary."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(path, root)
            for line, target in imported_modules(path, root):
                where = f"{path.relative_to(root)}:{line} imports {target}"
                rules = [p for p in FORBIDDEN if _under(importer, p)]
                for rule in rules:
                    for banned in FORBIDDEN[rule]:
                        allowed = any(
                            _under(importer, who) and _under(target, what) for who, what in EXCEPTIONS
                        )
                        if _under(target, banned) and not allowed:
                            found.append(f"{where} ({rule} must not import {banned})")
                names_a_suite = _under(importer, "mpc_core.functions") and _under(target, "mpc_core.suites")
                if names_a_suite and not any(_under(target, ok) for ok in SUITE_INTERFACES):
                    found.append(f"{where} (a function must not name a concrete suite or the registry)")
    return found


def test_no_import_crosses_a_forbidden_boundary():
    assert violations(ROOT) == []


def test_every_package_is_checked():
    """A new top-level package must get a rule (or be named here as deliberately free)."""
    free = {"tests", "data", "docs", "deploy"}
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages - free <= set(PACKAGES)


@pytest.mark.parametrize(
    ("path", "source", "rule"),
    [
        ("data_owner/x.py", "from server.jobs import JobManager\n", "data_owner must not import server"),
        ("server/x.py", "def f():\n    from data_owner import client\n", "server must not import data_owner"),
        ("mpc_core/nn/x.py", "import server.config\n", "mpc_core must not import server"),
        ("mpc_core/functions/x.py", "from mpc_core.suites.twoparty import TwoPartyCore\n", "concrete suite"),
        ("mpc_core/functions/x.py", "from mpc_core.suites import suite_class\n", "concrete suite"),
        ("mpc_core/functions/x.py", "from ..suites import replicated3pc\n", "concrete suite"),
        ("contract/x.py", "from cluster_ops.launcher import LocalCluster\n", "contract must not import"),
        ("model_owner/x.py", "from data_owner.encode import PublicModel\n", "model_owner must not import"),
    ],
)
def test_the_checker_catches_a_crossing(tmp_path, path, source, rule):
    """The checker is not vacuous: a planted crossing in a copy of the layout is reported."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for sub in ("mpc_core/nn", "mpc_core/functions", "mpc_core/suites"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "__init__.py").write_text("")
    for mod in ("mpc_core/suites/twoparty.py", "mpc_core/suites/replicated3pc.py", "mpc_core/suites/base.py"):
        (tmp_path / mod).write_text("")
    assert violations(tmp_path) == []
    (tmp_path / path).write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and rule in found[0], found


def test_the_suite_interface_and_the_demo_are_allowed(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "mpc_core/functions").mkdir()
    (tmp_path / "mpc_core/functions/__init__.py").write_text("")
    (tmp_path / "mpc_core/functions/x.py").write_text("from mpc_core.suites.base import Suite\n")
    (tmp_path / "data_owner/demo.py").write_text("from cluster_ops.testing import free_ports\n")
    assert violations(tmp_path) == []
