"""The package's layout (issue 11): no backend imports another, each module (of the engine,
the command line, the stores) says at its top what it owns, and none grows past ~700 lines
without saying why there.

A backend is a family of modules: ``imap.py`` and the ``imap_*.py`` beside it, and so on.
The one folder kind shared across a family line is vdir, which the Maildir store holds
(and which imports nothing of Maildir's).  Imports inside functions count too: they are
how the old cycle between maildir.py and vdir.py hid."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailsync

PACKAGE = Path(mailsync.__file__).parent
STORES = PACKAGE / "stores"
# Modules every backend may use: the interface, and the primitives shared on purpose.
SHARED = {"mailsync.stores.base", "mailsync.files"}
# A family may also use these other families' modules (what holds what).
HOLDS = {"maildir": {"vdir"}}
MAX_LINES = 700


def backend_modules() -> list[Path]:
    return sorted(p for p in STORES.glob("*.py") if p.name not in ("__init__.py", "base.py"))


def family(module: str) -> str:
    """mailsync.stores.imap_folder -> imap."""
    return module.rsplit(".", 1)[-1].split("_", 1)[0]


def imported_modules(path: Path) -> set[str]:
    """Every mailsync module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # "from mailsync.stores import imap" imports a module too
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("mailsync.")}


def store_modules_imported(path: Path) -> set[str]:
    """The modules of mailsync/stores that `path` imports (a name imported from one
    counts as the module)."""
    out = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "stores" and (STORES / f"{parts[2]}.py").exists():
            out.add(".".join(parts[:3]))
    return out


@pytest.mark.parametrize("path", backend_modules(), ids=lambda p: p.name)
def test_no_backend_imports_another(path):
    mine = family(f"mailsync.stores.{path.stem}")
    allowed = {mine, *HOLDS.get(mine, ())}
    foreign = sorted(
        name for name in store_modules_imported(path) - SHARED if family(name) not in allowed
    )
    assert not foreign, f"{path.name} imports another backend's modules: {foreign}"


def test_the_rule_sees_imports_inside_functions(tmp_path):
    """The check itself: an import hidden in a function is found (as maildir.py's of
    mbox.pid_alive and vdir were)."""
    module = tmp_path / "maildir_x.py"
    module.write_text("def f():\n    from mailsync.stores.mbox import pid_alive\n")
    assert store_modules_imported(module) == {"mailsync.stores.mbox"}


def every_module() -> list[Path]:
    """Every module of the package: the engine's, the command line's, each store's."""
    return sorted([*PACKAGE.glob("*.py"), *STORES.glob("*.py")])


@pytest.mark.parametrize("path", every_module(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_says_what_it_owns_and_stays_small(path):
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc, f"{path.name} has no docstring saying what it owns"
    lines = len(path.read_text().splitlines())
    if lines > MAX_LINES:
        assert f"over {MAX_LINES} lines" in doc, (
            f"{path.name} has {lines} lines: split it, or say at its top why it is one module "
            f'("over {MAX_LINES} lines, because ...")'
        )
