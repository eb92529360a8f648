"""The package's shape, checked from its source: no module reaches for another module's private
names, and imports run one way (core <- torch mirror <- the rest)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[2] / "jaxsoftmax"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def _violations(path: pathlib.Path) -> list[str]:
  """Imports of an underscore name from another module, and ``module._name`` accesses on a module
  bound by an import."""
  tree = ast.parse(path.read_text(), str(path))
  found, modules = [], set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxsoftmax"):
      for alias in node.names:
        if _private(alias.name):
          found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        modules.add(alias.asname or alias.name)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("jaxsoftmax"):
          modules.add(alias.asname or alias.name.split(".")[0])
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and _private(node.attr)
        and isinstance(node.value, ast.Name) and node.value.id in modules):
      found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
  return found


def _imported_modules(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text(), str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxsoftmax"):
      if node.module != "jaxsoftmax":  # `from jaxsoftmax import x` imports jaxsoftmax.x alone
        names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names if a.name.startswith("jaxsoftmax"))
  return names


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_no_module_imports_another_modules_private_names(path):
  assert not _violations(path), _violations(path)


def test_the_check_catches_what_it_is_for(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from jaxsoftmax._src.linear import _scan\nfrom jaxsoftmax._src import losses\n"
                 "losses._ce_labels_xla(1)\nimport jaxsoftmax\njaxsoftmax._version\n")
  assert len(_violations(bad)) == 3


@pytest.mark.parametrize("path", [p for p in MODULES if "_src" in p.parts], ids=_module_name)
def test_the_core_imports_only_the_core(path):
  outside = {m for m in _imported_modules(path)
             if m != "jaxsoftmax._src" and not m.startswith("jaxsoftmax._src.")}
  assert not outside, f"{_module_name(path)} imports {sorted(outside)}"


@pytest.mark.parametrize("name", ["functional", "nn"])
def test_the_torch_mirror_sits_on_the_core_alone(name):
  allowed = ("jaxsoftmax._src", "jaxsoftmax.functional")
  imported = _imported_modules(PACKAGE / f"{name}.py")
  assert all(m.startswith(allowed) for m in imported), sorted(imported)


def test_every_test_lives_in_the_folder_of_its_layer():
  tests = pathlib.Path(__file__).parents[1]
  assert not sorted(p.name for p in tests.glob("test_*.py")), "tests/ holds layer folders only"
  folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
  assert folders == {"core", "mirror", "parity", "tutorial", "bench", "package"}, folders
