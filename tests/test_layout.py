"""The layout keeps its shape: the import contracts hold, and no module grows past what one
person reads in one sitting unless it says why it must be one piece."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

MAX_LINES = 600
ONE_PIECE = "Kept as one piece:"


def test_import_contracts_hold():
    """The layers from the command line down to core, each package used through its public
    face, and the TUI a pure HTTP client (pyproject.toml's import-linter contracts)."""
    code = ("from importlinter.cli import lint_imports; "
            "raise SystemExit(lint_imports(config_filename='pyproject.toml', no_cache=True, "
            "no_logo=True))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 broken" in done.stdout


def test_no_module_is_too_long_to_hold_in_mind():
    too_long = []
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if ONE_PIECE not in doc:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not too_long, (f"over {MAX_LINES} lines without a docstring line "
                          f"'{ONE_PIECE} ...' saying why: {too_long}")


def test_every_stage_package_names_its_public_face():
    for package in sorted(p for p in (ROOT / "appliance").iterdir()
                          if (p / "__init__.py").exists()):
        tree = ast.parse((package / "__init__.py").read_text())
        assert ast.get_docstring(tree), f"{package.name}/__init__.py says what it holds"
        names = [t.id for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)]
        assert "__all__" in names, f"{package.name}/__init__.py names its face in __all__"
