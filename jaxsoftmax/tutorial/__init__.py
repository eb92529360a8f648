"""The tutorial app, built on the library: the tutorial's classifiers in Flax NNX and their PyTorch
twins, weights moved between them, real data, training with resumable checkpoints, and
temperature-scaling calibration.

Modules: :mod:`~jaxsoftmax.tutorial.models` (Flax), :mod:`~jaxsoftmax.tutorial.torch_models`
(PyTorch), :mod:`~jaxsoftmax.tutorial.interop` (weights both ways, always copied),
:mod:`~jaxsoftmax.tutorial.datasets` (UCI Adult, MNIST), :mod:`~jaxsoftmax.tutorial.training`
(``fit``), :mod:`~jaxsoftmax.tutorial.checkpoints` (atomic, verified state) and
:mod:`~jaxsoftmax.tutorial.calibration` (temperature, ECE, reliability diagrams). Nothing in the
library imports from here.
"""
