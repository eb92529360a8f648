"""Porting ``torch.nn.TransformerEncoderLayer`` to Flax NNX, checked with ``parity.compare_modules``.

The port below is written the way one would port it by hand: the same submodule names as torch
(``self_attn``, ``linear1``, ``norm1``, ...), attention through ``jaxsoftmax.softmax``. Run:

    .venv/bin/python examples/12_port_a_transformer_layer.py

It compares the port with torch's layer from the same weights three times and prints each report:
the faithful port passes (output, input gradient and all 12 parameter gradients); a port whose
``norm2`` keeps Flax's LayerNorm epsilon (1e-6, torch's is 1e-5) fails, and the report names
``norm2`` as the first submodule whose output leaves tolerance while its input agreed; a port
that forgets to scale the attention scores by 1/sqrt(head dim) is pinned on ``self_attn``.
"""

import math

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jaxsoftmax
from jaxsoftmax import parity

D_MODEL, HEADS, FFN, BATCH, LENGTH = 32, 4, 64, 3, 10


class SelfAttention(nnx.Module):
  """torch.nn.MultiheadAttention(D, H, batch_first=True) on one sequence, as q = k = v."""

  def __init__(self, d_model: int, heads: int, *, scale: bool = True, rngs: nnx.Rngs):
    self.in_proj = nnx.Linear(d_model, 3 * d_model, rngs=rngs)  # torch: in_proj_weight, _bias
    self.out_proj = nnx.Linear(d_model, d_model, rngs=rngs)
    self.heads, self.scale = heads, scale

  def __call__(self, x):
    b, t, d = x.shape
    q, k, v = jnp.split(self.in_proj(x), 3, axis=-1)

    def heads(a):  # (B, T, D) -> (B, H, T, D / H)
      return a.reshape(b, t, self.heads, d // self.heads).transpose(0, 2, 1, 3)

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2)
    if self.scale:
      scores = scores / math.sqrt(d // self.heads)
    weights = jaxsoftmax.softmax(scores, axis=-1)
    return self.out_proj((weights @ heads(v)).transpose(0, 2, 1, 3).reshape(b, t, d))


class EncoderLayer(nnx.Module):
  """Post-norm encoder layer: x = norm1(x + attn(x)); x = norm2(x + ffn(x)), ReLU, dropout."""

  def __init__(self, d_model: int, heads: int, ffn: int, *, dropout: float = 0.1,
               norm2_eps: float = 1e-5, scale: bool = True, rngs: nnx.Rngs):
    self.self_attn = SelfAttention(d_model, heads, scale=scale, rngs=rngs)
    self.linear1 = nnx.Linear(d_model, ffn, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.linear2 = nnx.Linear(ffn, d_model, rngs=rngs)
    self.norm1 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d_model, epsilon=norm2_eps, rngs=rngs)
    self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x):
    x = self.norm1(x + self.dropout1(self.self_attn(x)))
    ffn = self.linear2(self.dropout(nnx.relu(self.linear1(x))))
    return self.norm2(x + self.dropout2(ffn))


# torch keeps the packed q/k/v projection as two tensors on MultiheadAttention itself.
RENAME = [(r"self_attn\.in_proj_(weight|bias)", r"self_attn.in_proj.\1")]
SLIPS = {
    "faithful port": {},
    "slip: norm2 keeps Flax's LayerNorm eps 1e-6": {"norm2_eps": 1e-6},
    "slip: attention scores not scaled by 1/sqrt(head dim)": {"scale": False},
}


def make_pair(**slip) -> parity.Pair:
  """torch's layer (seeded), the NNX port (with an optional slip) and a batch, for
  ``jaxsoftmax parity --pair examples/12_port_a_transformer_layer.py:make_pair``."""
  torch.manual_seed(0)
  torch_layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, batch_first=True)
  port = EncoderLayer(D_MODEL, HEADS, FFN, rngs=nnx.Rngs(0), **slip)
  x = np.random.default_rng(0).standard_normal((BATCH, LENGTH, D_MODEL)).astype(np.float32)
  return parity.Pair(port, torch_layer, (x,), {"names": ["x"], "rename": RENAME})


def make_slipped_pair() -> parity.Pair:
  """The eps slip, for ``--pair examples/12_port_a_transformer_layer.py:make_slipped_pair``."""
  return make_pair(norm2_eps=1e-6)


def main():
  for label, slip in SLIPS.items():
    pair = make_pair(**slip)
    report = parity.compare_modules(pair.jax, pair.torch, *pair.inputs, **pair.options)
    report.title = f"{label}: {report.title}"
    print(report.markdown())
    first = report.first_divergence
    print(f"verdict: {'PASS' if report.passed else 'FAIL'}; first diverging submodule: "
          f"{first.torch_name if first else 'none'}\n")


if __name__ == "__main__":
  main()
