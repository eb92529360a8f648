"""``jaxsoftmax parity --pair FILE.py:FACTORY``: a user's port and its original, on every device.

The factory takes no arguments and returns a :class:`Pair` (or a ``(jax, torch, inputs)`` tuple, or
a dict with those keys and an optional ``options``). A torch ``nn.Module`` on the torch side makes
it a :func:`~jaxsoftmax.parity.compare_modules` comparison, anything else
:func:`~jaxsoftmax.parity.compare_functions`. The factory is called afresh for each JAX platform
present, so no state carries from one device's run to the next.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence

from jaxsoftmax._src.errors import ArgumentError
from jaxsoftmax._src.files import write_text

__all__ = ["Pair", "load_factory", "as_pair", "run_pair"]


@dataclasses.dataclass
class Pair:
  """The two sides of a comparison, their inputs (torch's layout), and keyword options for
  ``compare_modules`` / ``compare_functions`` (``rename``, ``layouts``, ``anchor``, ...)."""

  jax: object
  torch: object
  inputs: tuple = ()
  options: Mapping = dataclasses.field(default_factory=dict)


def load_factory(spec: str):
  """``path/to/file.py:name`` -> the callable ``name`` defined in that file."""
  path, sep, name = spec.rpartition(":")
  if not sep or not path or not name:
    raise ArgumentError(f"--pair {spec!r}: expected FILE.py:FACTORY, e.g. tests/my_port.py:make_pair")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"--pair: no file {file}")
  module_name = f"_jaxsoftmax_pair_{file.stem}"
  module_spec = importlib.util.spec_from_file_location(module_name, file)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
  module_spec.loader.exec_module(module)
  factory = getattr(module, name, None)
  if not callable(factory):
    raise ArgumentError(f"--pair: {file} defines no callable {name!r}")
  return factory


def as_pair(made) -> Pair:
  if isinstance(made, Pair):
    return made
  if isinstance(made, Mapping):
    unknown = set(made) - {"jax", "torch", "inputs", "options"}
    if unknown or not {"jax", "torch"} <= set(made):
      raise ArgumentError(f"the pair factory returned a dict with keys {sorted(made)}; expected "
                          "jax, torch, inputs and optionally options")
    return Pair(made["jax"], made["torch"], tuple(made.get("inputs", ())),
                dict(made.get("options", {})))
  if isinstance(made, Sequence) and len(made) in (3, 4):
    return Pair(made[0], made[1], tuple(made[2]), dict(made[3]) if len(made) == 4 else {})
  raise ArgumentError(f"the pair factory must return a parity.Pair, a (jax, torch, inputs) tuple "
                      f"or a dict; got {type(made).__name__}")


def run_pair(console, spec: str, *, out="parity-report", devices: Sequence[str] | None = None
             ) -> int:
  """Runs the pair on each JAX platform, prints each report, writes ``out/pair.{json,md}``;
  returns 0 when all pass, 1 otherwise, 2 when a device asked for is missing."""
  import jax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from jaxsoftmax.parity.functions import compare_functions  # noqa: PLC0415
  from jaxsoftmax.parity.modules import compare_modules  # noqa: PLC0415
  from jaxsoftmax.parity.runner import platforms  # noqa: PLC0415

  factory = load_factory(spec)
  present = platforms()
  for p in devices or []:
    if p not in present:
      console.print(f"[red]device {p!r} not present; JAX sees {present}[/red]")
      return 2
  reports = []
  for platform in devices or present:
    pair = as_pair(factory())
    device = jax.devices(platform)[0]
    compare = compare_modules if isinstance(pair.torch, torch.nn.Module) else compare_functions
    with jax.default_device(device):
      report = compare(pair.jax, pair.torch, *pair.inputs, jax_device=device, **pair.options)
    report.title = f"{spec} on {platform}: {report.title}"
    report.print(console)
    reports.append(report)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  write_text(out / "pair.json", json.dumps([r.to_dict() for r in reports], indent=2, default=str))
  write_text(out / "pair.md", "\n".join(r.markdown() for r in reports))
  failed = sum(not r.passed for r in reports)
  console.print(f"{len(reports) - failed} passed, {failed} failed; report written to "
                f"{out / 'pair.json'} and {out / 'pair.md'}")
  return 1 if failed else 0
