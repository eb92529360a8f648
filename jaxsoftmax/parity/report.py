"""What a comparison of a JAX port with its torch original found: :class:`ParityReport`.

A report holds one :class:`~jaxsoftmax.parity.compare.Comparison` per checked leaf (outputs,
gradients, parameters), the per-layer comparisons that localise a divergence, and for training
runs the per-step table. The verdict (:attr:`ParityReport.passed`) is that of the outputs and
gradients; layers are diagnostics and never fail a report whose outputs pass. It renders as a
self-contained assertion message, Markdown, JSON and a rich table.

Every report made in a process is also handed to the listeners registered with :func:`listen`
(the pytest plugin's ``--parity-report`` collects them that way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable

from jaxsoftmax.parity.compare import Comparison

__all__ = ["ParityReport", "LayerCheck", "listen", "publish", "muted"]

_LISTENERS: list[Callable[[ParityReport], None]] = []
_MUTED = [0]


def listen(callback: Callable[["ParityReport"], None]) -> Callable[[], None]:
  """Calls ``callback(report)`` for every report made from now on; returns the function that
  stops it."""
  _LISTENERS.append(callback)
  return lambda: _LISTENERS.remove(callback) if callback in _LISTENERS else None


def publish(report: "ParityReport") -> "ParityReport":
  if not _MUTED[0]:
    for callback in list(_LISTENERS):
      callback(report)
  return report


@contextlib.contextmanager
def muted():
  """Reports made inside are parts of a larger one (compare_modules' inner comparison): they
  are not handed to the listeners."""
  _MUTED[0] += 1
  try:
    yield
  finally:
    _MUTED[0] -= 1


@dataclasses.dataclass
class LayerCheck:
  """One submodule's input and output on both sides, in torch's execution order."""

  torch_name: str
  jax_name: str
  input: Comparison | None
  output: Comparison

  @property
  def diverges_here(self) -> bool:
    """Its output leaves tolerance while its input (when captured) was within it."""
    return not self.output.ok and (self.input is None or self.input.ok)


def _num(value: float) -> str:
  return "-" if value is None else (f"{value:.2e}" if math.isfinite(value) else str(value))


@dataclasses.dataclass
class ParityReport:
  """The outcome of :func:`~jaxsoftmax.parity.compare_functions`,
  :func:`~jaxsoftmax.parity.compare_modules` or :func:`~jaxsoftmax.parity.compare_training`."""

  title: str
  checks: list[Comparison] = dataclasses.field(default_factory=list)
  layers: list[LayerCheck] = dataclasses.field(default_factory=list)
  steps: list[dict] = dataclasses.field(default_factory=list)
  meta: dict = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)
  divergence: str = ""
  # compare_modules on a Linen module or a callable: its variables / params with the weights
  # loaded (an NNX module is updated in place instead).
  jax_variables: object = dataclasses.field(default=None, repr=False)

  @property
  def passed(self) -> bool:
    return bool(self.checks) and all(c.ok for c in self.checks)

  @property
  def failures(self) -> list[Comparison]:
    return [c for c in self.checks if not c.ok]

  @property
  def first_divergence(self) -> LayerCheck | None:
    """The first layer (torch's execution order) whose output leaves tolerance while its input
    was within it; None when every compared layer agrees."""
    return next((layer for layer in self.layers if layer.diverges_here), None)

  def _verdict(self) -> str:
    failed = len(self.failures)
    return (f"PASS: {len(self.checks)} checks" if self.passed
            else f"FAIL: {failed} of {len(self.checks)} checks")

  def summary(self) -> str:
    """A readable account on its own: verdict, each failure with its worst entries and the
    tolerance, and where the divergence starts."""
    lines = [f"{self.title}: {self._verdict()}"]
    if self.meta.get("devices"):
      lines.append(f"devices: {self.meta['devices']}")
    lines += [f.report() for f in self.failures]
    if self.divergence:
      lines.append(self.divergence)
    lines += self.notes
    return "\n".join(lines)

  def assert_passed(self) -> None:
    """Raises ``AssertionError`` with :meth:`summary` when any check failed."""
    if not self.passed:
      raise AssertionError(self.summary())

  def to_dict(self) -> dict:
    return {
        "title": self.title, "passed": self.passed, "meta": self.meta, "notes": self.notes,
        "divergence": self.divergence,
        "checks": [c.to_dict() for c in self.checks],
        "layers": [{"torch": layer.torch_name, "jax": layer.jax_name,
                    "input": layer.input.to_dict() if layer.input else None,
                    "output": layer.output.to_dict(), "diverges_here": layer.diverges_here}
                   for layer in self.layers],
        "steps": self.steps,
    }

  def json(self, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent, default=str)

  def markdown(self) -> str:
    lines = [f"### {self.title}", "", f"**{self._verdict()}**", ""]
    meta = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))}
    if meta:
      lines += [" · ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    lines += ["| check | dtype | max abs err | max rel err | rtol | atol | result |",
              "|---|---|---|---|---|---|---|"]
    for c in self.checks:
      result = "PASS" if c.ok else f"FAIL{': ' + c.problem if c.problem else ''}"
      if c.anchor_error is not None:
        result += (f" (float64 anchor: {c.anchor_error:.2e} vs torch's "
                   f"{c.reference_anchor_error:.2e})")
      lines.append(f"| {c.label} | {c.dtype} | {_num(c.max_abs)} | {_num(c.max_rel)} | "
                   f"{_num(c.rtol)} | {_num(c.atol)} | {result} |")
    if self.layers:
      first = None if self.passed else self.first_divergence
      lines += ["", "| layer (torch) | layer (JAX) | input max abs err | output max abs err | "
                "output |", "|---|---|---|---|---|"]
      for layer in self.layers:
        mark = "**first divergence**" if layer is first else (
            "ok" if layer.output.ok else "off")
        lines.append(f"| {layer.torch_name} | {layer.jax_name} | "
                     f"{_num(layer.input.max_abs) if layer.input else 'not captured'} | "
                     f"{_num(layer.output.max_abs)} | {mark} |")
    if self.steps:
      keys = list(self.steps[0])
      lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
      lines += ["| " + " | ".join(f"{s[k]:.6g}" if isinstance(s[k], float) else str(s[k])
                                  for k in keys) + " |" for s in self.steps]
    if self.divergence:
      lines += ["", self.divergence]
    failures = [c.report() for c in self.failures[:3]]
    if len(self.failures) > 3:
      failures.append(f"... and {len(self.failures) - 3} more failing checks (in the table)")
    if failures:
      lines += ["", "```", *failures, "```"]
    lines += [""] + self.notes if self.notes else []
    return "\n".join(lines) + "\n"

  def __rich__(self):
    from rich.console import Group  # noqa: PLC0415 - rich only where a table is drawn
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{self.title}: {self._verdict()}")
    for col in ("check", "dtype", "max abs err", "max rel err", "rtol", "atol", "result"):
      table.add_column(col, justify="right" if "err" in col or "tol" in col else "left")
    for c in self.checks:
      table.add_row(c.label, c.dtype, _num(c.max_abs), _num(c.max_rel), _num(c.rtol),
                    _num(c.atol), "[green]PASS[/green]" if c.ok else "[red]FAIL[/red]")
    parts = [table]
    if self.layers:
      layers = Table(title="layers, in torch's execution order")
      for col in ("torch", "JAX", "input err", "output err", ""):
        layers.add_column(col)
      first = None if self.passed else self.first_divergence
      for layer in self.layers:
        mark = ("[red]first divergence[/red]" if layer is first
                else "ok" if layer.output.ok else "[yellow]off[/yellow]")
        layers.add_row(layer.torch_name, layer.jax_name,
                       _num(layer.input.max_abs) if layer.input else "-",
                       _num(layer.output.max_abs), mark)
      parts.append(layers)
    if self.divergence:
      parts.append(self.divergence)
    return Group(*parts)

  def print(self, console=None) -> None:
    """Prints the rich tables (a plain console when none is given)."""
    from rich.console import Console  # noqa: PLC0415

    (console or Console()).print(self)
