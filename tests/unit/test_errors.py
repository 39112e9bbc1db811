"""The one exception tree: every exception class of the package is defined in errors.py,
the tree drawn in its docstring is the real class hierarchy, and the package raises those
errors, not ValueError and the like."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path

import pytest

import agentmesh_cli
from agentmesh_cli import errors

PACKAGE = Path(agentmesh_cli.__file__).parent
ERRORS_MODULE = "agentmesh_cli.errors"


# (a) no exception class outside errors.py ----------------------------------------------
def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Package:
    """Every module of the package read with ast (nothing of the package is imported):
    its classes and its imported names, so a base class can be followed to where it is
    defined, through re-exports, into the package or out of it."""

    def __init__(self, root: Path) -> None:
        self.every_class: list[tuple[ast.ClassDef, str]] = []  # (node, module), nested ones too
        self.classes: dict[str, tuple[ast.ClassDef, str]] = {}  # qualified name -> (node, module)
        self.names: dict[str, dict[str, str]] = {}  # module -> local name -> qualified name
        self.files: dict[str, Path] = {}
        for path in sorted(root.rglob("*.py")):
            module = module_name(root, path)
            self.files[module] = path.relative_to(root.parent)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            local = self.names.setdefault(module, {})
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    # classes in functions count too; top-level ones are also names of the module
                    self.every_class.append((node, module))
                    self.classes.setdefault(f"{module}.{node.name}", (node, module))
                    if node in tree.body:
                        local[node.name] = f"{module}.{node.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname:
                            local[alias.asname] = alias.name
                        else:
                            local[alias.name.split(".")[0]] = alias.name.split(".")[0]
                elif isinstance(node, ast.ImportFrom):
                    base = self._absolute(module, path, node)
                    for alias in node.names:
                        local[alias.asname or alias.name] = f"{base}.{alias.name}"

    @staticmethod
    def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        return ".".join([*package, *([node.module] if node.module else [])])

    def qualified(self, module: str, expr: ast.expr) -> str | None:
        """The dotted name a base class expression stands for, or None (a call, a subscript)."""
        parts: list[str] = []
        while isinstance(expr, ast.Attribute):
            parts.insert(0, expr.attr)
            expr = expr.value
        if isinstance(expr, ast.Subscript):  # Generic[T], a parametrised base
            return self.qualified(module, expr.value) if not parts else None
        if not isinstance(expr, ast.Name):
            return None
        head = self.names.get(module, {}).get(expr.id)
        if head is None:
            head = f"builtins.{expr.id}" if hasattr(builtins, expr.id) else f"{module}.{expr.id}"
        return ".".join([head, *parts])

    def derives_from_exception(self, node: ast.ClassDef, module: str,
                               seen: frozenset[str] = frozenset()) -> bool:
        bases = (self.qualified(module, base) for base in node.bases)
        return any(self.is_exception(base, seen) for base in bases if base is not None)

    def is_exception(self, name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in seen:
            return False
        if name in self.classes:
            node, module = self.classes[name]
            return self.derives_from_exception(node, module, seen | {name})
        module, _, attr = name.rpartition(".")
        if module in self.names:  # a name another module of the package imported: follow it
            target = self.names[module].get(attr)
            return target is not None and self.is_exception(target, seen | {name})
        return _external_is_exception(name)

    def exception_classes(self) -> list[tuple[str, str]]:
        """Every exception class the package defines: (qualified name, file:line class)."""
        return [(f"{module}.{node.name}", f"{self.files[module]}:{node.lineno} class {node.name}")
                for node, module in self.every_class if self.derives_from_exception(node, module)]


def _external_is_exception(name: str) -> bool:
    """A base from outside the package (builtins, the standard library, a dependency)."""
    module, _, attr = name.rpartition(".")
    while module:
        try:
            value: object = importlib.import_module(module)
        except ImportError:
            module, _, outer = module.rpartition(".")
            attr = f"{outer}.{attr}"
            continue
        for part in attr.split("."):
            value = getattr(value, part, None)
        return inspect.isclass(value) and issubclass(value, BaseException)
    return False


def test_every_exception_class_is_defined_in_errors_py() -> None:
    found = Package(PACKAGE).exception_classes()
    outside = sorted(where for name, where in found if not name.startswith(f"{ERRORS_MODULE}."))
    assert not outside, "define exception classes in agentmesh_cli/errors.py:\n" + "\n".join(outside)
    # the walk does see them: every class of errors.py is found
    assert {name.rpartition(".")[2] for name, _ in found} == set(real_tree())


def test_the_walk_finds_an_exception_class_wherever_it_hides(tmp_path: Path) -> None:
    """The check itself: classes that derive from an exception directly, through the
    package's own errors, through a re-export, from a library, or inside a function."""
    root = tmp_path / "agentmesh_cli"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "errors.py").write_text("class AgentMeshError(Exception):\n    pass\n")
    (root / "reexport.py").write_text("from agentmesh_cli.errors import AgentMeshError\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "mod.py").write_text(
        "import json\n"
        "from enum import Enum\n"
        "from .. import errors\n"
        "from ..reexport import AgentMeshError as Base\n"
        "class Plain:\n    pass\n"
        "class Colour(Enum):\n    RED = 1\n"
        "class Direct(ValueError):\n    pass\n"
        "class Relative(errors.AgentMeshError):\n    pass\n"
        "class ViaReexport(Base):\n    pass\n"
        "class FromLibrary(json.JSONDecodeError):\n    pass\n"
        "class Grandchild(Direct):\n    pass\n"
        "def make():\n    class Inner(KeyError):\n        pass\n    return Inner\n"
        "def shadow():\n    class Plain(OSError):\n        pass\n    return Plain\n"
    )
    package = Package(root)
    found = {name.removeprefix("agentmesh_cli.") for name, _ in package.exception_classes()}
    assert found == {"errors.AgentMeshError", "sub.mod.Direct", "sub.mod.Relative",
                     "sub.mod.ViaReexport", "sub.mod.FromLibrary", "sub.mod.Grandchild",
                     "sub.mod.Inner", "sub.mod.Plain"}


# raising: the project's own errors -------------------------------------------------------
GENERIC = {"Exception", "ValueError", "TypeError", "RuntimeError", "TimeoutError", "KeyError",
           "LookupError", "OSError", "AssertionError"}
# pydantic's protocol: a validator raises ValueError, parse_config makes one ConfigError of them
GENERIC_ALLOWED = {"agentmesh_cli/config.py", "agentmesh_cli/config_values.py", "agentmesh_cli/config_llm.py",
                   "agentmesh_cli/config_sections.py"}


def test_the_package_raises_its_own_errors() -> None:
    """No `raise ValueError(...)` and the like: the CLI shows an AgentMeshError as one red
    line, anything else as a traceback. (NotImplementedError, SystemExit and
    KeyboardInterrupt keep their Python meaning.)"""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, ast.Name) and raised.id in GENERIC and where not in GENERIC_ALLOWED:
                found.append(f"{where}:{node.lineno} raise {raised.id}")
    assert not found, "raise an error of agentmesh_cli/errors.py instead:\n" + "\n".join(found)


# (b) the drawn tree is the real one ------------------------------------------------------
TREE_LINE = re.compile(r"(?P<lead>[ │]*)(?:(?P<branch>[├└])── )?(?P<name>\w+)(?:\s|$)")


def drawn_tree(doc: str) -> dict[str, str | None]:
    """class -> drawn parent (None for the root), from the tree in the docstring: the block
    of lines that starts with the root class, each level 4 columns further in."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().split(" ")[0] == "AgentMeshError")
    tree: dict[str, str | None] = {}
    path: list[str] = []  # the ancestors of the line being read
    root_column = lines[start].index("AgentMeshError")
    for line in lines[start:]:
        if not line.strip():
            break
        match = TREE_LINE.match(line)
        assert match, f"not a line of the tree: {line!r}"
        column = match.start("name") - root_column
        # the root alone, first, without a branch; every other line on one, 4 columns a level
        assert column % 4 == 0 and (column == 0) == (match["branch"] is None) == (not tree), \
            f"misdrawn line: {line!r}"
        depth = column // 4
        assert depth <= len(path), f"drawn deeper than its parent: {line!r}"
        name = match["name"]
        assert name not in tree, f"{name} is drawn twice"
        del path[depth:]
        tree[name] = path[-1] if path else None
        path.append(name)
    return tree


def real_tree() -> dict[str, str | None]:
    """class -> parent, for every exception class errors.py defines (None for the root)."""
    tree: dict[str, str | None] = {}
    for name, cls in vars(errors).items():
        if not (inspect.isclass(cls) and issubclass(cls, BaseException)) or cls.__module__ != ERRORS_MODULE:
            continue
        assert len(cls.__bases__) == 1, f"{name} has several bases; the tree draws one"
        base = cls.__bases__[0]
        tree[name] = base.__name__ if base.__module__ == ERRORS_MODULE else None
    return tree


def test_the_drawn_tree_is_the_real_class_hierarchy() -> None:
    assert errors.__doc__
    drawn, real = drawn_tree(errors.__doc__), real_tree()
    assert set(real) - set(drawn) == set(), "classes of errors.py missing from the drawn tree"
    assert set(drawn) - set(real) == set(), "drawn classes that errors.py does not define"
    wrong = {name: f"drawn under {drawn[name]}, is under {real[name]}"
             for name in real if drawn[name] != real[name]}
    assert not wrong
    assert [name for name, parent in real.items() if parent is None] == ["AgentMeshError"]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("    A\n    ├── B\n    │   └── C\n", None),
        ("    A\n    ├── B\n        └── C\n", None),  # the ruler of a finished branch may be blank
        ("    A\n    ├── B\n      └── C\n", "misdrawn"),
        ("    A\n    B\n", "misdrawn"),
        ("    A\n    │   └── C\n", "deeper"),
        ("    A\n    ├── B\n    └── B\n", "twice"),
    ],
)
def test_drawn_tree_parsing(doc: str, problem: str | None) -> None:
    doc = doc.replace("    A\n", "    AgentMeshError   the root\n", 1)
    if problem is None:
        assert drawn_tree(doc) == {"AgentMeshError": None, "B": "AgentMeshError", "C": "B"}
    else:
        with pytest.raises(AssertionError, match=problem):
            drawn_tree(doc)
