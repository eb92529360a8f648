"""jaxsoftmax's pytest plugin (installed with the package through the ``pytest11`` entry point).

It is a top-level module, outside the ``jaxsoftmax`` package, so that pytest loading it in every
run of an environment where jaxsoftmax is installed does not import JAX (2.3-2.6 s here): the
package is imported only when a test asks for the fixture or ``--parity-report`` is given.

- The ``parity`` fixture: :func:`~jaxsoftmax.parity.compare_functions`,
  :func:`~jaxsoftmax.parity.compare_modules` and :func:`~jaxsoftmax.parity.compare_training`,
  and ``assert_functions`` / ``assert_modules`` / ``assert_training``, which also call
  ``assert_passed()`` on the report.
- ``--parity-report=DIR``: every report made during the run (through the fixture or the API
  directly) is collected, tagged with its test's node id, and written to ``DIR/parity-report.json``
  and ``DIR/parity-report.md`` at the end. Under pytest-xdist each worker writes its part and the
  controller merges them.

Nothing heavy is imported unless a test asks for the fixture or the option is given.
"""

from __future__ import annotations

import json
import pathlib

import pytest

_PARTS = ".parts"


def pytest_addoption(parser):
  group = parser.getgroup("jaxsoftmax", "jaxsoftmax parity")
  group.addoption("--parity-report", metavar="DIR", default=None,
                  help="collect every jaxsoftmax parity report of the run into "
                       "DIR/parity-report.{json,md}")


class _Collector:
  def __init__(self, directory: str):
    self.directory = pathlib.Path(directory)
    self.test = ""
    self.entries: list[dict] = []
    self.markdown: list[str] = []

  def __call__(self, report) -> None:
    self.entries.append({"test": self.test, **report.to_dict()})
    self.markdown.append(f"#### `{self.test}`\n\n{report.markdown()}")


_KEY = pytest.StashKey[_Collector]()


def pytest_configure(config):
  directory = config.getoption("--parity-report", None)
  if directory:
    from jaxsoftmax.parity.report import listen  # noqa: PLC0415

    collector = _Collector(directory)
    collector.stop = listen(collector)
    config.stash[_KEY] = collector


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
  collector = item.config.stash.get(_KEY, None)
  if collector is not None:
    collector.test = item.nodeid
  try:
    return (yield)
  finally:
    if collector is not None:
      collector.test = ""


def _write(collector: _Collector, entries: list[dict], markdown: list[str]) -> None:
  from jaxsoftmax._src.files import write_text  # noqa: PLC0415

  directory = collector.directory
  directory.mkdir(parents=True, exist_ok=True)
  failed = sum(not e["passed"] for e in entries)
  head = (f"# Parity reports of this test run\n\n{len(entries)} comparisons, {failed} failed.\n\n")
  write_text(directory / "parity-report.json",
             json.dumps({"comparisons": entries, "failed": failed}, indent=2, default=str))
  write_text(directory / "parity-report.md", head + "\n".join(markdown))


def pytest_sessionfinish(session, exitstatus):
  collector = session.config.stash.get(_KEY, None)
  if collector is None:
    return
  collector.stop()
  parts = collector.directory / _PARTS
  worker = getattr(session.config, "workerinput", None)
  if worker is not None:  # an xdist worker: leave a part for the controller
    from jaxsoftmax._src.files import write_text  # noqa: PLC0415

    parts.mkdir(parents=True, exist_ok=True)
    write_text(parts / f"{worker['workerid']}.json",
               json.dumps({"entries": collector.entries, "markdown": collector.markdown},
                          default=str))
    return
  entries, markdown = list(collector.entries), list(collector.markdown)
  for part in sorted(parts.glob("*.json")) if parts.is_dir() else []:
    loaded = json.loads(part.read_text())
    entries += loaded["entries"]
    markdown += loaded["markdown"]
    part.unlink()
  if parts.is_dir():
    parts.rmdir()
  _write(collector, entries, markdown)


class ParityFixture:
  """The comparison API, plus ``assert_*`` forms that fail the test with the report."""

  def __getattr__(self, name):
    from jaxsoftmax import parity  # noqa: PLC0415

    if name in ("compare_functions", "compare_modules", "compare_training"):
      return getattr(parity, name)
    if name in ("assert_functions", "assert_modules", "assert_training"):
      compare = getattr(parity, name.replace("assert_", "compare_"))

      def check(*args, **kwargs):
        report = compare(*args, **kwargs)
        report.assert_passed()
        return report
      return check
    raise AttributeError(name)


@pytest.fixture
def parity() -> ParityFixture:
  """``parity.compare_modules(...)`` returns a report; ``parity.assert_modules(...)`` fails the
  test with the report's summary when the port diverges."""
  return ParityFixture()
