"""Installs jaxsoftmax with each extra into its own clean virtual environment and runs what the
extra promises (the snippets of tests/package/test_extras.py). `make extras`; minutes, not part of
`make test`, which checks the same promises by making other packages unimportable."""

import importlib.util
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("test_extras", ROOT / "tests" / "package" / "test_extras.py")
extras_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(extras_test)


def check(extra, venvs: pathlib.Path) -> bool:
  name = extra or "core"
  venv = venvs / name
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  python = venv / "bin" / "python"
  target = f"{ROOT}[{extra}]" if extra else str(ROOT)
  subprocess.run([python, "-m", "pip", "install", "--quiet", "-c", ROOT / "constraints.txt",
                  target], check=True)
  installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], check=True,
                             capture_output=True, text=True).stdout.lower()
  run = subprocess.run([python, "-c", extras_test.USES[extra]], capture_output=True, text=True,
                       cwd=venvs)
  present = sorted(m for m in extras_test.OPTIONAL if f"\n{m}==" in "\n" + installed)
  print(f"{name}: {'ok' if run.returncode == 0 else 'FAILED'}; optional packages installed: "
        f"{present}", flush=True)
  if run.returncode:
    print(run.stderr[-3000:])
  return run.returncode == 0


if __name__ == "__main__":
  with tempfile.TemporaryDirectory() as tmp:
    results = [check(extra, pathlib.Path(tmp)) for extra in extras_test.USES]
  sys.exit(0 if all(results) else 1)
