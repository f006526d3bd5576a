"""`minorpo exercises list | start N [DEST] | check N FILE [--json]`: graded exercises for a course.

`start` copies exercise N's stub (tutorials/exercises/NN_*.py) to DEST; `check` grades a file: each check prints
ok, or what failed on the smallest failing input (expected vs got) and one hint. The checks run in a subprocess
under a time limit, so a file that hangs, crashes or does not import is reported, not fatal. Exit status: 0 all
checks passed, 1 some failed, 2 a usage error (unknown exercise, missing file). `--json` prints one line for
autograders: {"exercise", "slug", "file", "score", "passed", "total", "failed", "imports_minorpo"}.
"""

import importlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from minorpo.errors import UserError
from minorpo.exercises import EXERCISES, STUBS


def get(number: int):
    if number not in EXERCISES:
        raise UserError(f"exercise {number}: no such exercise; `minorpo exercises list` shows 1-{max(EXERCISES)}")
    return EXERCISES[number]


def list_exercises() -> int:
    print(f"{'#':>2}  {'stub':28s} {'tutorial':8s}  what you write")
    for e in EXERCISES.values():
        print(f"{e.number:>2}  {e.stub_name:28s} {e.tutorial:^8d}  {e.title}")
    print("\nminorpo exercises start N        copies the stub to the current folder\n"
          "minorpo exercises check N FILE   grades your file")
    return 0


def start(number: int, dest: str | None) -> int:
    ex = get(number)
    stub = STUBS / ex.stub_name
    if not stub.is_file():
        raise UserError(f"exercise {number}: its stub {stub} is missing (the stubs ship with a minorpo checkout, "
                        "in tutorials/exercises/)")
    target = Path(dest) if dest else Path(ex.stub_name)
    if target.is_dir():
        target = target / ex.stub_name
    if target.exists():
        raise UserError(f"{target} already exists: not overwriting it (give another DEST, or move it away)")
    shutil.copyfile(stub, target)
    print(f"wrote {target}: fill it in, then run `minorpo exercises check {number} {target}`")
    return 0


STARTUP_S = 120.0  # for the worker to import torch, hypothesis and the checks, before the time limit starts


def run_checks(number: int, path: Path, time_limit: float) -> tuple[list[dict], list[str]]:
    """(one result per check of the exercise, notes), from a worker subprocess (see worker.py)."""
    names = [t.name for t in importlib.import_module(EXERCISES[number].module).TESTS]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryFile("w+") as err_file:  # a file, not a pipe: a chatty student cannot block the worker
        proc = subprocess.Popen([sys.executable, "-m", "minorpo.exercises.worker", str(number), str(path)],
                                stdout=subprocess.PIPE, stderr=err_file, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put(None)], daemon=True).start()
        results, notes, running, ready, timed_out = {}, [], None, False, False
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                timed_out = True
                proc.kill()
                break
            if line is None:
                break
            msg = json.loads(line)
            if "ready" in msg:
                ready, deadline = True, time.monotonic() + time_limit
            elif "note" in msg:
                notes.append(msg["note"])
            elif "start" in msg:
                running = msg["start"]
            else:
                results[msg["test"]], running = msg, None
        proc.wait()
        err_file.seek(0)
        err = err_file.read().strip()[-300:]
    if timed_out:
        ended = (f"did not finish within the time limit of {time_limit:g} s (an endless loop? a Python loop over "
                 "every element?)" if ready else f"the check process did not start within {STARTUP_S:g} s")
    else:
        ended = f"the check process ended abruptly (exit status {proc.returncode}): {err}"
    if running is not None:  # started and never finished
        results[running] = {"test": running, "passed": False, "message": ended}
    for name in names:
        if name not in results:
            why = "the time limit was reached during an earlier check" if timed_out else ended
            results[name] = {"test": name, "passed": False, "message": f"not run: {why}"}
    return [results[n] for n in names], notes


def report(ex, path: str, results: list[dict], notes: list[str]) -> None:
    print(f"exercise {ex.number} ({ex.title}): {path}")
    for note in notes:
        print(f"  note: {note}")
    for r in results:
        print(f"  {'ok  ' if r['passed'] else 'FAIL'}  {r['test']}")
        if r["passed"]:
            continue
        print(f"        {r['message']}")
        for key in ("input", "expected", "got", "hint"):
            if r.get(key) is not None:
                text = str(r[key]).replace("\n", "\n" + " " * 18)
                print(f"        {key + ':':9s} {text}")
    passed = sum(r["passed"] for r in results)
    print(f"{passed}/{len(results)} checks passed" + (": well done" if passed == len(results) else ""))


def check(number: int, file: str, time_limit: float, as_json: bool) -> int:
    ex = get(number)
    path = Path(file)
    if not path.is_file():
        raise UserError(f"{file}: no such file (`minorpo exercises start {number}` writes the stub)")
    if time_limit <= 0:
        raise UserError(f"--time-limit must be > 0 seconds, got {time_limit:g}")
    results, notes = run_checks(number, path.resolve(), time_limit)
    passed = sum(r["passed"] for r in results)
    if as_json:
        print(json.dumps({"exercise": number, "slug": ex.slug, "file": file, "score": round(passed / len(results), 4),
                          "passed": passed, "total": len(results),
                          "failed": [r["test"] for r in results if not r["passed"]],
                          "imports_minorpo": bool(notes)}))
    else:
        report(ex, file, results, notes)
    return 0 if passed == len(results) else 1


def add_cli(subparsers):
    p = subparsers.add_parser("exercises", help="graded exercises: list, start one, check your solution",
                              description=__doc__)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="the exercises and the tutorial each goes with").set_defaults(
        func=lambda a: list_exercises())
    s = sub.add_parser("start", help="copy exercise N's stub (never overwrites a file)")
    s.add_argument("number", type=int, help="exercise number (`minorpo exercises list`)")
    s.add_argument("dest", nargs="?", help="file or folder to write (default: ./NN_name.py)")
    s.set_defaults(func=lambda a: start(a.number, a.dest))
    c = sub.add_parser("check", help="grade FILE as exercise N")
    c.add_argument("number", type=int, help="exercise number")
    c.add_argument("file", help="your solution (the filled-in stub)")
    c.add_argument("--json", action="store_true", help="print one JSON line (score, passed, total) for autograders")
    c.add_argument("--time-limit", type=float, default=120.0, help="seconds for all checks together (default 120)")
    c.set_defaults(func=lambda a: check(a.number, a.file, a.time_limit, a.json))
