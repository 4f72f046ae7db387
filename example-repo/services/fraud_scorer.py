"""BentoML service for the fraud-scorer model: a logistic regression over four
transaction features, weights read from the BentoML model store.

mdc builds the bento with ``--arg model_tag=NAME:VERSION`` so the exact model
is pinned inside the bento (a bare ``name:latest`` would be resolved at serve
time and could silently change). ``score_transaction`` is plain Python so it
can be unit-tested without a server.
"""

from __future__ import annotations

import json
import math
from typing import Any

import bentoml

args = bentoml.use_arguments()
MODEL_TAG = getattr(args, "model_tag", None)
#: mdc imports a single-file artifact into the model store under this name.
ARTIFACT_FILE = "artifact.json"


def score_transaction(weights: dict[str, Any], features: dict[str, float]) -> float:
    """Probability of fraud for one transaction; missing features count as 0."""
    z = weights["bias"] + sum(
        w * float(features.get(name, 0.0))
        for name, w in zip(weights["features"], weights["weights"], strict=True)
    )
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@bentoml.service(name="fraud-scorer", traffic={"timeout": 10})
class FraudScorer:
    model = bentoml.models.BentoModel(MODEL_TAG) if MODEL_TAG else None

    def __init__(self) -> None:
        if self.model is None:
            raise RuntimeError("build this service with --arg model_tag=NAME:VERSION")
        with open(self.model.path_of(ARTIFACT_FILE), encoding="utf-8") as f:
            self.weights = json.load(f)

    @bentoml.api
    def score(self, transactions: list[dict[str, float]]) -> list[float]:
        """Fraud probability for each transaction."""
        return [score_transaction(self.weights, t) for t in transactions]
