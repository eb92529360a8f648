"""The census-income classifier: train on real UCI Adult data, then softmax at inference.

The model returns logits (no softmax in forward: CrossEntropyLoss includes it); probabilities come
from softmax afterwards. The torch twin, given the trained weights, gives the same numbers.
Full run: `jaxsoftmax train income` (this example trains briefly).
"""

import numpy as np
import torch

from jaxsoftmax.tutorial import datasets, interop, models, torch_models
from jaxsoftmax.tutorial.training import fit

result = fit("income", epochs=1, max_steps=300)
print(f"after {len(result.losses)} Adam steps: held-out accuracy {result.test_accuracy:.3f}")

twin = torch_models.IncomeClassifier().eval()
twin.load_state_dict(interop.to_torch(result.model), strict=True)
x = datasets.load_adult().x_test[:5]  # five people from the test split
ours = np.asarray(models.predict_proba(result.model, x))
with torch.no_grad():
  theirs = torch.softmax(twin(torch.from_numpy(x)), dim=1).numpy()
print("P(>50K) jaxsoftmax:", ours[:, 1].round(4).tolist())
print("P(>50K) torch     :", theirs[:, 1].round(4).tolist())
print("max |difference|  :", float(np.abs(ours - theirs).max()))
