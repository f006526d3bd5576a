"""Run one exercise's checks on a student's file: `python -m minorpo.exercises.worker N FILE`.

Writes one JSON object per line to its stdout: {"ready": true}, {"note": ...} if the file imports minorpo,
{"start": name} before each check, then {"test": name, "passed": bool, ...}. grader.py runs it in a subprocess and enforces the time limit, so a check that hangs is the last
"start" without a result. Whatever the student's code prints goes to stderr, so it cannot garble those lines.
"""

import ast
import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

from minorpo.exercises import EXERCISES, harness


FORM_HINT = "the stub's docstring says what to return: its \"Returns:\" line gives the type, shape and dtype"


def load_student(path: Path):
    """(module, None), or (None, why the file does not import)."""
    spec = importlib.util.spec_from_file_location("student_solution", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as for an imported module (dataclasses and pickling look themselves up there)
    sys.path.insert(0, str(path.parent))  # a student may keep helpers next to the file, as a script could
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        text = f": {e.text.strip()}" if e.text else ""
        return None, f"your file does not import: SyntaxError at line {e.lineno}: {e.msg}{text}"
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # includes SystemExit: a file that calls exit() at import
        return None, f"your file does not import: {type(e).__name__}: {e}{harness.where(e)}"
    return module, None


def imports_minorpo(path: Path) -> bool:
    """Does the file import minorpo (whose implementation the exercise asks the student to write)?"""
    try:
        tree = ast.parse(path.read_text())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return False
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n == "minorpo" or n.startswith("minorpo.") for n in names):
            return True
    return False


def grade(number: int, path: Path, only=None):
    """Events of grading `path` as exercise `number`: {"ready": True} once the checks are imported (the time limit
    starts there, so it covers the student's import), then {"start": name} and the result of each check."""
    import torch
    torch.set_num_threads(1)  # the checks use small tensors; threads only add overhead
    checks = importlib.import_module(EXERCISES[number].module)
    yield {"ready": True}
    harness.STUDENT_FILE = str(path)
    if imports_minorpo(path):
        yield {"note": "your file imports minorpo: the exercise is to write this yourself, and the grader compares "
                       "you with minorpo"}
    student, import_error = load_student(path)
    for t in checks.TESTS:
        if only is not None and not only(t.name):
            continue
        yield {"start": t.name}
        result = {"test": t.name, "passed": False}
        if student is None:
            result["message"] = import_error
        else:
            try:
                t.run(student)
                result["passed"] = True
            except harness.Failure as f:
                hint = FORM_HINT if f.kind == "form" else t.hint
                result.update(message=f.message, input=f.input, expected=f.expected, got=f.got, hint=hint)
            except Exception as e:  # a bug in the check itself, not in the student's code
                tail = "".join(traceback.format_exception(e)[-3:]).strip()
                result["message"] = f"the grader itself failed (please report it): {tail}"
        yield {k: v for k, v in result.items() if v is not None}


def main(argv) -> int:
    number, path = int(argv[0]), Path(argv[1]).resolve()
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's channel
    os.dup2(2, 1)  # the student's prints (and C-level output) go to stderr from here on
    sys.stdout = sys.stderr
    for event in grade(number, path):
        out.write(json.dumps(event) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
