"""minorpo/ never imports the test-only oracles (transformers, trl, peft).

Two independent checks: (1) a fresh interpreter imports every minorpo module, runs `minorpo --help` (which
imports every CLI module), and then none of the oracles is in sys.modules; (2) an AST scan of every file
under minorpo/ finds no import statement naming them (this also catches imports inside functions, which (1)
would only see if the function ran) and no importlib/__import__ call with their names as a string.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ORACLES = ("transformers", "trl", "peft")
PACKAGE = Path(__file__).resolve().parents[1] / "minorpo"


def test_importing_every_module_loads_no_oracle():
    code = """
import contextlib, importlib, io, json, pkgutil, sys
import minorpo
names = [m.name for m in pkgutil.walk_packages(minorpo.__path__, "minorpo.")
         if m.name != "minorpo.__main__"]  # __main__ runs the CLI; main(["--help"]) below covers it
errors = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:  # reported below: an unimportable module could hide an oracle import
        errors[name] = f"{type(e).__name__}: {e}"
from minorpo.tools.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
print(json.dumps({"modules": names, "errors": errors,
                  "oracles": sorted(m for m in sys.modules if m.split(".")[0] in ORACLES)}))
""".replace("ORACLES", repr(ORACLES))
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}, "modules that failed to import"
    assert {"minorpo.models.llama", "minorpo.models.opt", "minorpo.hf.loader", "minorpo.tools.generate"} <= set(result["modules"])
    assert result["oracles"] == [], f"minorpo imported {result['oracles']}"


def oracle_imports(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__"):
                names = [node.args[0].value]
        found += [f"{filename}:{node.lineno}: {n}" for n in names if n.split(".")[0] in ORACLES]
    return found


def test_no_import_statement_names_an_oracle():
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "models" / "llama.py" in files
    found = [hit for f in files for hit in oracle_imports(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert found == []


def test_the_scan_detects_what_it_should():
    """The AST scan is not vacuous: it flags each form of import it is meant to catch."""
    src = ("import transformers\nfrom trl.trainer import X\nimport os, peft.tuners as t\n"
           "def f():\n    import transformers.models\n    importlib.import_module('trl')\n"
           "from . import trl_notes\nimport transformers_like\n")
    assert [h.split(": ")[1] for h in oracle_imports(src, "x.py")] == \
        ["transformers", "trl.trainer", "peft.tuners", "transformers.models", "trl"]
