"""Run one exercise's checks on a student's file: `python -m minorpo.exercises.worker N FILE`.

Writes one JSON object per line to its stdout: {"start": name} before each check, then {"test": name, "passed":
bool, ...}. grader.py runs it in a subprocess and enforces the time limit, so a check that hangs is the last
"start" without a result. Whatever the student's code prints goes to stderr, so it cannot garble those lines.
"""

import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

from minorpo.exercises import EXERCISES, harness


def load_student(path: Path):
    """(module, None), or (None, why the file does not import)."""
    spec = importlib.util.spec_from_file_location("student_solution", path)
    module = importlib.util.module_from_spec(spec)
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


def grade(number: int, path: Path, only=None):
    """Events of grading `path` as exercise `number`: {"ready": True} once the checks are imported (the time limit
    starts there, so it covers the student's import), then {"start": name} and the result of each check."""
    import torch
    torch.set_num_threads(1)  # the checks use small tensors; threads only add overhead
    checks = importlib.import_module(EXERCISES[number].module)
    yield {"ready": True}
    harness.STUDENT_FILE = str(path)
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
                result.update(message=f.message, input=f.input, expected=f.expected, got=f.got, hint=t.hint)
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
