"""The tutorial's first steps, side by side: nn.Softmax(dim=1) on 3x5 logits, F.softmax, the
implicit dim, temperature, and CrossEntropyLoss already including log-softmax."""

import jax.numpy as jnp
import numpy as np
import torch

import jaxsoftmax
from jaxsoftmax import functional as F
from jaxsoftmax import nn


def main():
  logits = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
  ours = nn.Softmax(dim=1)(logits)
  theirs = torch.nn.Softmax(dim=1)(torch.from_numpy(logits))
  print("nn.Softmax(dim=1) rows sum to", np.asarray(ours.sum(1)).round(6).tolist())
  print("max |jax - torch| =", float(np.abs(np.asarray(ours) - theirs.numpy()).max()))
  print("F.softmax(dim=0) columns sum to", np.asarray(F.softmax(logits, dim=0).sum(0)).round(6).tolist())
  for t in (0.5, 1.0, 2.0):
    p = jaxsoftmax.softmax(logits[0], temperature=t)
    print(f"T={t}: max probability {float(p.max()):.3f}")
  target = np.array([1, 0, 4])
  ce = F.cross_entropy(logits, target)
  by_hand = F.nll_loss(F.log_softmax(logits, dim=1), target)
  torch_ce = torch.nn.CrossEntropyLoss()(torch.from_numpy(logits), torch.from_numpy(target))
  print(f"cross_entropy {float(ce):.6f} = nll(log_softmax) {float(by_hand):.6f}; "
        f"torch {torch_ce.item():.6f}")


if __name__ == "__main__":
  main()
