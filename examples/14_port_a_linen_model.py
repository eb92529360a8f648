"""A Flax Linen port of a small torch MLP with BatchNorm, checked with ``parity.compare_modules``.

    .venv/bin/python examples/14_port_a_linen_model.py

Linen names its submodules ``Dense_0``, ``BatchNorm_0``, ... where torch says ``fc1``, ``bn``;
``rename`` rules (regular expressions on torch's names) pair them, for the weights and for the
per-layer comparison alike. BatchNorm's ``weight``/``running_mean``/``running_var`` find Linen's
``scale`` (params) and ``mean``/``var`` (batch_stats) by themselves. The faithful port passes; a
port that leaves out the ReLU (a function call between ``bn`` and ``fc2``, not a submodule) is
located between the two layers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxsoftmax import parity


class TorchMLP(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(8, 16)
    self.bn = torch.nn.BatchNorm1d(16)
    self.fc2 = torch.nn.Linear(16, 3)

  def forward(self, x):
    return self.fc2(torch.relu(self.bn(self.fc1(x))))


class LinenMLP(nn.Module):
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)(nn.Dense(16)(x))
    return nn.Dense(3)(nn.relu(x) if self.relu else x)


RENAME = [(r"^fc1(?=\.|$)", "Dense_0"), (r"^bn(?=\.|$)", "BatchNorm_0"),
          (r"^fc2(?=\.|$)", "Dense_1")]


def main():
  torch.manual_seed(0)
  original = TorchMLP()
  with torch.no_grad():  # running statistics as a trained model would have them
    original.bn.running_mean.uniform_(-0.5, 0.5)
    original.bn.running_var.uniform_(0.5, 2.0)
  x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
  for label, relu in (("faithful Linen port", True), ("slip: the ReLU left out", False)):
    module = LinenMLP(relu=relu)
    variables = module.init(jax.random.key(0), jnp.asarray(x))
    report = parity.compare_modules(module, original, x, params=variables, names=["x"],
                                    rename=RENAME)
    report.title = f"{label}: {report.title}"
    print(report.markdown())
    first = report.first_divergence
    print(f"verdict: {'PASS' if report.passed else 'FAIL'}; "
          f"{report.divergence or 'no divergence'}\n")


if __name__ == "__main__":
  main()
