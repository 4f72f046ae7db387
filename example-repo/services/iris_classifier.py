"""BentoML service for the iris-classifier: a scikit-learn model registered in
MLflow, served through BentoML's MLflow integration.

mdc fetches the MLflow version the spec names (``artifact.mlflow``), imports it
into the model store in ``bentoml.mlflow``'s layout and builds the bento with
``--arg model_tag=NAME:VERSION``; ``bentoml.mlflow.load_model`` gives the
pyfunc model. mlflow and scikit-learn come from the model's own environment
(``python.packages`` in its spec), not from the controller's.
"""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

args = bentoml.use_arguments()
MODEL_TAG = getattr(args, "model_tag", None)
SPECIES = ("setosa", "versicolor", "virginica")


@bentoml.service(name="iris-classifier", traffic={"timeout": 10})
class IrisClassifier:
    model = bentoml.models.BentoModel(MODEL_TAG) if MODEL_TAG else None

    def __init__(self) -> None:
        if self.model is None:
            raise RuntimeError("build this service with --arg model_tag=NAME:VERSION")
        self.pyfunc = bentoml.mlflow.load_model(self.model)
        labels = self.model.info.labels
        self.registered = (
            f"{labels.get('mdc.dev/mlflow-model')}/{labels.get('mdc.dev/mlflow-version')}"
        )

    @bentoml.api
    def classify(self, flowers: list[list[float]]) -> dict[str, Any]:
        """The species of each flower (sepal length and width, petal length and
        width, in cm), and which MLflow version answered."""
        classes = self.pyfunc.predict(np.asarray(flowers, dtype=float))
        return {
            "species": [SPECIES[int(c)] for c in classes],
            "model": self.registered,
        }
