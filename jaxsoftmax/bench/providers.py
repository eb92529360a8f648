"""The providers: for one (op, provider, shape, dtype), the inputs and one zero-argument callable
per mode that blocks until done. JAX providers are jitted and compiled here; torch providers run
on CPU or CUDA. Frameworks are imported on first use."""

from __future__ import annotations

from collections.abc import Sequence

import time

import numpy as np

from .config import SELF_VARIANTS, SOFTCAP, Z_LOSS, Unavailable, is_linear

__all__ = ["inputs", "itemsize", "minimal_bytes", "flops", "jax_setup", "torch_setup",
           "torch_device", "setup"]


# Modules of this package import each other relatively and nothing of jaxsoftmax at import time:
# child.py loads them as a package of their own, so torch's process never imports jax.


def inputs(op: str, shape, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  if is_linear(op):
    n, d, v = shape
    scale = 8.0 if op.endswith("[filter]") else 1.0  # peaked predictions for the filter rows
    return {"x": rng.standard_normal((n, d), np.float32),
            "w": (rng.standard_normal((d, v), np.float32) * np.float32(scale / np.sqrt(d))),
            "labels": rng.integers(0, v, n).astype(np.int32)}
  n, v = shape
  out = {"x": (rng.standard_normal((n, v), np.float32) * 2)}
  if op in ("cross_entropy", "nll_loss"):
    out["labels"] = rng.integers(0, v, n).astype(np.int32)
  if op == "cross_entropy[probs]":  # soft targets: a random distribution per row, float32
    t = rng.random((n, v), np.float32)
    out["labels"] = t / t.sum(axis=-1, keepdims=True)
  return out


def itemsize(dtype: str) -> int:
  return 2 if dtype == "bfloat16" else 4


def minimal_bytes(op: str, shape, dtype: str, mode: str) -> int:
  """Each input read once and each output written once (labels and scalars included)."""
  b = itemsize(dtype)
  if is_linear(op):
    n, d, v = shape
    params = (n * d + d * v) * b
    return params + n * 4 if mode == "fwd" else 2 * params + n * 4
  n, v = shape
  nv = n * v * b
  if op in ("cross_entropy", "nll_loss"):  # fwd reads x and labels; bwd writes dx
    return (nv if mode == "fwd" else 2 * nv) + n * 4
  if op == "cross_entropy[probs]":  # the float32 targets are read too
    return (nv if mode == "fwd" else 2 * nv) + n * v * 4
  return {"fwd": 2 * nv, "bwd": 3 * nv, "fwd+bwd": 4 * nv}[mode]


def flops(op: str, shape, mode: str) -> float | None:
  """Matmul FLOPs of linear_cross_entropy (2NDV per matmul: 1 forward, 2 backward)."""
  if not is_linear(op):
    return None
  n, d, v = shape
  return 2.0 * n * d * v * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[mode]


def _jax_fns(op: str, impl: str):
  """The loss or transform as ``f(labels, *differentiable_inputs)``. Labels are an argument of
  every jitted function, never a closed-over constant (XLA would spend minutes folding it)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  import jaxsoftmax  # noqa: PLC0415

  kw = {"jaxsoftmax[xla]": {"implementation": "xla"},
        "jaxsoftmax[pallas]": {"implementation": "pallas"}}.get(impl, {})
  ours = impl in ("jaxsoftmax",) + SELF_VARIANTS
  if op in ("softmax", "log_softmax", "softmin"):
    peer = (lambda x, axis: jax.nn.softmax(-x, axis=axis)) if op == "softmin" else getattr(
        jax.nn, op)
    fn = getattr(jaxsoftmax, op) if ours else {"jax.nn": peer}.get(impl)
    return None if fn is None else (lambda labels, x: fn(x, axis=-1, **kw))
  if op == "cross_entropy[probs]":
    if ours:
      return lambda targets, x: jaxsoftmax.cross_entropy(x, targets.astype(x.dtype), **kw)
    if impl == "optax":
      import optax  # noqa: PLC0415
      return lambda targets, x: optax.softmax_cross_entropy(x, targets.astype(x.dtype)).mean()
    return None
  if op == "nll_loss":  # the JAX idiom a user writes: the label's entry, negated, averaged
    if ours:
      return lambda labels, x: jaxsoftmax.nll_loss(x, labels)
    if impl == "jax.numpy":
      return lambda labels, x: -jnp.mean(jnp.take_along_axis(x, labels[:, None], axis=-1))
    return None
  if op == "cross_entropy":
    if ours:
      return lambda labels, x: jaxsoftmax.cross_entropy(x, labels, **kw)
    if impl == "optax":
      import optax  # noqa: PLC0415
      return lambda labels, x: optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()
    return None
  if op == "linear_cross_entropy[filter]":
    if impl not in ("jaxsoftmax", "jaxsoftmax[exact]"):
      return None
    eps = "auto" if impl == "jaxsoftmax" else None
    return lambda labels, x, w: jaxsoftmax.linear_cross_entropy(x, w, labels, filter_eps=eps)
  if op == "linear_cross_entropy[z+cap]":
    if ours:
      return lambda labels, x, w: jaxsoftmax.linear_cross_entropy(
          x, w, labels, z_loss=Z_LOSS, logit_softcap=SOFTCAP, **kw)
    if impl == "optax":
      import optax  # noqa: PLC0415

      def composed(labels, x, w):
        z = jnp.dot(x, w, preferred_element_type=jnp.float32)
        z = SOFTCAP * jnp.tanh(z / SOFTCAP)
        lse = jax.nn.logsumexp(z, axis=-1)
        return (optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
                + Z_LOSS * jnp.mean(lse * lse)).astype(x.dtype)
      return composed
    return None
  if ours:
    return lambda labels, x, w: jaxsoftmax.linear_cross_entropy(x, w, labels, **kw)
  if impl == "optax":
    import optax  # noqa: PLC0415
    return lambda labels, x, w: optax.softmax_cross_entropy_with_integer_labels(
        jnp.dot(x, w, preferred_element_type=jnp.float32), labels).mean()
  if impl == "tokamax":
    try:
      import tokamax  # noqa: PLC0415
    except ImportError as e:
      raise Unavailable("tokamax is not installed (pip install 'jaxsoftmax[bench]')") from e
    from absl import flags  # noqa: PLC0415 - tokamax reads absl flags, parsing sys.argv if unparsed

    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # our command line is not tokamax's
    return lambda labels, x, w: tokamax.linear_softmax_cross_entropy_loss(
        x, labels, w, reduction="mean", implementation="xla")
  return None


def jax_setup(op: str, impl: str, shape, dtype: str, modes: Sequence[str], *,
              reverse: bool = False):
  """(callables per mode, XLA temp MiB per mode) for a JAX provider.

  ``reverse`` compiles each program with its parameters in the opposite order: the same
  computation and kernels, but XLA:CPU orders independent kernels (the label gathers, the row
  max) by parameter order, and that order alone moved one provider's time by up to 10%, in
  either direction by shape (benchmarks/NOTES.md, eighth pass). A user's program has no
  canonical order, so the sweep times both."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxsoftmax._src.copies import jax_copy  # noqa: PLC0415

  make = _jax_fns(op, impl)
  if make is None:
    raise Unavailable(f"{impl} has no {op}")
  data = inputs(op, shape, dtype)
  jdtype = jnp.dtype(dtype)
  # Copies: the torch provider builds its tensors from the same arrays.
  labels = jax_copy(data["labels"]) if "labels" in data else None
  args = tuple(jax_copy(data[k], jdtype) for k in ("x", "w") if k in data)
  f = make
  out0 = jax.eval_shape(f, labels, *args)
  g = jnp.ones(out0.shape, out0.dtype)

  def fwd_bwd(labels, g, *a):
    y, vjp = jax.vjp(lambda *d: f(labels, *d), *a)
    # A scalar loss is differentiated as jax.value_and_grad does it, with the cotangent 1.0 known
    # to the compiler (so a gradient formed in the forward pass needs no scaling pass); any other
    # output gets its cotangent as an argument, like an upstream gradient.
    return y, vjp(jnp.ones((), out0.dtype) if out0.shape == () else g)

  def compiled_call(fn, *operands):
    """``fn(*operands)`` compiled, and the blocking call of it (the executable is the callable's
    last default: the probes under benchmarks/ read its HLO there)."""
    if reverse:
      compiled = jax.jit(lambda *r: fn(*r[::-1])).lower(*operands[::-1]).compile()
      operands = operands[::-1]
    else:
      compiled = jax.jit(fn).lower(*operands).compile()
    return compiled, lambda compiled=compiled: jax.block_until_ready(compiled(*operands))

  calls, temp = {}, {}
  for mode in modes:
    if mode == "bwd":  # the VJP function is a pytree of residuals: jit it as an argument
      _, vjp = jax.jit(lambda labels, *a: jax.vjp(lambda *d: f(labels, *d), *a))(labels, *args)
      compiled, calls[mode] = compiled_call(lambda fn, gg: fn(gg), vjp, g)
    elif mode == "fwd":
      compiled, calls[mode] = compiled_call(f, labels, *args)
    else:
      compiled, calls[mode] = compiled_call(fwd_bwd, labels, g, *args)
    analysis = compiled.memory_analysis()
    temp[mode] = None if analysis is None else analysis.temp_size_in_bytes / 2**20
  return calls, temp


def torch_setup(op: str, impl: str, shape, dtype: str, modes: Sequence[str],
                device: str = "cpu"):
  """Callables per mode for torch eager, torch.compile and torch's chunked linear path, on
  ``device`` ("cuda" when JAX runs on a GPU and torch has CUDA; each call then synchronises)."""
  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: PLC0415

  data = inputs(op, shape, dtype)
  tdtype = getattr(torch, dtype)
  # Copies (np.array), never views of the arrays the JAX providers read. Not via jaxsoftmax._src.copies:
  # importing the package would import jax into torch's process (see peak_rss).
  x = torch.from_numpy(np.array(data["x"], copy=True)).to(device, tdtype)
  labels = (torch.from_numpy(np.array(data["labels"], np.int64, copy=True)).to(device)
            if "labels" in data else None)
  if op in ("softmax", "log_softmax"):
    base = (lambda t: getattr(torch, op)(t, -1))
    args = [x]
  elif op == "cross_entropy":
    base = (lambda t: F.cross_entropy(t, labels))
    args = [x]
  elif op == "linear_cross_entropy[z+cap]":
    if impl != "torch":
      raise Unavailable(f"{impl} is not benchmarked with z-loss and soft-cap")
    w = torch.from_numpy(np.array(data["w"].T, copy=True, order="C")).to(device, tdtype)

    def base(t, u):  # composed from torch's own ops, in float32 as optax's
      z = F.linear(t, u).float()
      z = SOFTCAP * torch.tanh(z / SOFTCAP)
      lse = torch.logsumexp(z, -1)
      return (F.cross_entropy(z, labels) + Z_LOSS * (lse * lse).mean()).to(tdtype)
    args = [x, w]
  elif not op == "linear_cross_entropy":
    raise Unavailable(f"{impl} has no {op}")
  else:
    if not hasattr(F, "linear_cross_entropy"):
      raise Unavailable(f"torch {torch.__version__} has no linear_cross_entropy (2.13 added it)")
    w = torch.from_numpy(np.array(data["w"].T, copy=True, order="C")).to(device, tdtype)  # (V, D)
    options = torch.nn.LinearCrossEntropyOptions() if impl == "torch-chunked" else None
    base = (lambda t, u: F.linear_cross_entropy(t, u, labels, options=options))
    args = [x, w]
  if impl == "torch.compile":
    if is_linear(op):
      raise Unavailable("torch.compile of linear_cross_entropy is not benchmarked")
    # A fresh dynamo cache per configuration: otherwise every shape and dtype recompiles the same
    # code object until torch's recompile limit silently falls back to eager; dynamic=False, so
    # each shape gets its own specialised kernels (what a user with fixed shapes gets).
    torch._dynamo.reset()
    fn = torch.compile(base, dynamic=False)
    try:
      with torch.no_grad():
        fn(*args)
      t = x.clone().requires_grad_()
      fn(t).sum().backward()
    except Exception as e:  # noqa: BLE001 - inductor needs a working C++ toolchain
      raise Unavailable(f"torch.compile failed here: {type(e).__name__}: {e}") from e
  elif impl in ("torch", "torch-chunked"):
    fn = base
  else:
    raise Unavailable(f"{impl} is not a torch provider")

  grads = [a.clone().requires_grad_() for a in args]
  out = fn(*grads)
  g = torch.ones_like(out)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  calls = {}
  for mode in modes:
    if mode == "fwd":
      def call():
        with torch.no_grad():
          fn(*args)
        sync()
    elif mode == "fwd+bwd":
      def call():
        for a in grads:
          a.grad = None
        fn(*grads).backward(g)
        sync()
    else:
      def call():
        saved = fn(*grads)  # a fresh graph each time, built outside the timed region
        sync()
        start = time.perf_counter()
        torch.autograd.grad(saved, grads, g)
        sync()
        return time.perf_counter() - start
    calls[mode] = call
  return calls, {m: None for m in modes}


def torch_device(jax_platform: str) -> str:
  """torch runs where JAX runs: CUDA beside a JAX GPU (if torch has it), else the CPU."""
  if jax_platform != "gpu":
    return "cpu"
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return "cpu"
  return "cuda" if torch.cuda.is_available() else "cpu"


def setup(op, impl, shape, dtype, modes, device="cpu"):
  if impl.startswith("torch"):
    return torch_setup(op, impl, shape, dtype, modes, device)
  return jax_setup(op, impl, shape, dtype, modes)


