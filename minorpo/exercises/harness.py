"""What every exercise's checks use: call the student's code, check what it returned, compare it with an oracle,
and report the smallest failing input that hypothesis finds.

A check is a function of the student's module, registered with `@test(name, hint)`. It passes by returning and
fails by raising `Failure` (message, and when known the input, the expected and the got values). `call` turns
anything the student's code raises into a Failure naming the exception and the line of the student's file.
`for_all` runs a body on hypothesis-generated inputs (plain Python values, so that the report shows them as drawn
even if the student's code modified its tensors in place); hypothesis shrinks a failure to its smallest input.

Tolerances: float64 results are compared at 1e-12 where a few roundings (2^-53 = 1.1e-16 each) separate two
correct computations of values of order 1, and at 1e-10 after sums or matrix products of dozens of terms; float32
and bfloat16 tolerances are derived where they are used. The mistakes the checks look for change results by 1e-3
or more, so no tolerance is near the line between right and wrong.
"""

import os
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

STUDENT_FILE: str | None = None  # set by the worker: frames of this file are named in error messages
EXAMPLES = int(os.environ.get("MINORPO_EXERCISE_EXAMPLES", "60"))  # hypothesis examples per property check


class Failure(Exception):
    """A check that did not pass: what went wrong, on which input, expected vs got."""

    def __init__(self, message: str, input=None, expected=None, got=None, kind: str = "value"):
        super().__init__(message)
        self.message, self.input, self.expected, self.got = message, input, expected, got
        self.kind = kind  # "value", or "form": the wrong type, shape or dtype (the worker then hints at the stub)


class NotWritten(Failure):
    """The student's code raised NotImplementedError: the stub is not filled in (nothing to shrink)."""


@dataclass
class Test:
    name: str
    hint: str  # one hint shown when the check fails: where to look, never the solution
    run: Callable


def test(name: str, hint: str):
    """Register a check in the calling module's TESTS list (created on first use)."""
    def register(fn):
        import sys
        module = sys.modules[fn.__module__]
        module.__dict__.setdefault("TESTS", []).append(Test(name, hint, fn))
        return fn
    return register


def need(student, name: str):
    """The student's function or class `name`, or a Failure saying it is missing."""
    obj = getattr(student, name, None)
    if obj is None:
        raise Failure(f"your file defines no `{name}` (keep the name and signature of the stub)")
    return obj


def where(exc: BaseException) -> str:
    """' (your file, line N)' for the deepest frame of the student's file in exc's traceback, else ''."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == STUDENT_FILE]
    return f" (your file, line {lines[-1]})" if lines else ""


def call(fn, *args, what: str, **kwargs):
    """fn(*args, **kwargs), with whatever it raises turned into a Failure that says so."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        raise NotWritten(f"{what} raised NotImplementedError{where(e)}: not written yet (the stub still raises it)") from None
    except Failure:
        raise
    except Exception as e:  # the student's bug, reported as one line
        raise Failure(f"{what} raised {type(e).__name__}: {e}{where(e)}") from None


def check_tensor(got, shape, dtype, what: str) -> torch.Tensor:
    """got must be a tensor of this shape and dtype (shape None: any shape)."""
    if not isinstance(got, torch.Tensor):
        raise Failure(f"{what} returned a {type(got).__name__}, expected a torch.Tensor", got=_short(got), kind="form")
    if shape is not None and tuple(got.shape) != tuple(shape):
        raise Failure(f"{what} returned shape {tuple(got.shape)}, expected {tuple(shape)}", expected=tuple(shape),
                      got=tuple(got.shape), kind="form")
    if dtype is not None and got.dtype != dtype:
        raise Failure(f"{what} returned dtype {got.dtype}, expected {dtype}", expected=str(dtype), got=str(got.dtype),
                      kind="form")
    return got


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    """Elementwise |got - expected| <= atol + rtol |expected|; equal infinities agree; NaN never does."""
    if tuple(got.shape) != tuple(expected.shape):
        raise Failure(f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    g, e = got.detach().double().cpu(), expected.detach().double().cpu()
    same_inf = torch.isinf(e) & (g == e)
    ok = same_inf | ((g - e).abs() <= atol + rtol * e.abs())
    ok &= ~torch.isnan(g)
    if bool(ok.all()):
        return
    bad = (~ok).nonzero()[0].tolist()
    at = f" at index {bad}" if e.dim() else ""
    raise Failure(f"{what} differs{at}: expected {e[tuple(bad)].item():.8g}, got {g[tuple(bad)].item():.8g} "
                  f"(tolerance {atol:g} + {rtol:g} x |expected|)", expected=_short(e.to(expected.dtype)),
                  got=_short(g.to(got.dtype) if got.dtype.is_floating_point else g))


def _short(x, limit: int = 400) -> str:
    if isinstance(x, torch.Tensor):
        with torch.no_grad():
            torch.set_printoptions(precision=8, threshold=40, edgeitems=3)
            text = repr(x.detach().cpu())
            torch.set_printoptions(profile="default")
    else:
        text = repr(x)
    return text if len(text) <= limit else text[:limit] + " ..."


def describe(drawn: dict) -> str:
    return ", ".join(f"{k} = {_short(v, 300)}" for k, v in drawn.items())


def for_all(body, examples: int | None = None, **strategies) -> None:
    """Run body(**drawn) on hypothesis-generated inputs; re-raise the Failure of the smallest failing input."""
    from hypothesis import HealthCheck, Verbosity, given, settings

    not_written = []

    @settings(max_examples=examples or EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False,
              verbosity=Verbosity.quiet)
    @given(**strategies)
    def prop(**drawn):
        try:
            body(**drawn)
        except NotWritten as f:  # every input fails the same way: no need to search for a smaller one
            not_written.append(f)
        except Failure as f:
            f.input = f.input or describe(drawn)
            raise

    try:
        prop()
        if not_written:
            raise not_written[0]
    except Failure:
        raise
    except BaseException as e:  # hypothesis' own errors: a failure that did not reproduce (FlakyFailure), ...
        inner = [x for x in getattr(e, "exceptions", ()) if isinstance(x, Failure)]
        if inner:
            raise Failure(inner[0].message + " (and not again when re-run on the same input: does your code keep "
                          "state between calls or use randomness?)", inner[0].input, inner[0].expected,
                          inner[0].got, inner[0].kind) from None
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise Failure(f"{type(e).__name__}: {e}") from None


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def to_tensor(values, dtype: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).to(DTYPES[dtype])
