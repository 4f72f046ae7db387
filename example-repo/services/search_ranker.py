"""BentoML service for the search-ranker model: a linear relevance score per
candidate document, used to reorder search results.

Like every example service, the model is pinned by the ``model_tag`` build
argument that mdc passes to ``bentoml build``. ``rank_documents`` is plain
Python so it can be unit-tested without a server.
"""

from __future__ import annotations

import json
from typing import Any

import bentoml

args = bentoml.use_arguments()
MODEL_TAG = getattr(args, "model_tag", None)
#: mdc imports a single-file artifact into the model store under this name.
ARTIFACT_FILE = "artifact.json"


def rank_documents(
    weights: dict[str, Any], documents: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The documents with a ``score``, best first; ties keep their input order.

    A document that lacks one of the model's features is an error, never a
    silent zero: a score made up from missing data is worse than no answer.
    """
    for doc in documents:
        missing = [name for name in weights["features"] if name not in doc]
        if missing:
            raise ValueError(f"document {doc.get('id')!r} lacks feature(s) {missing}")
    scored = [
        dict(
            doc,
            score=sum(
                w * float(doc[name])
                for name, w in zip(weights["features"], weights["weights"], strict=True)
            ),
        )
        for doc in documents
    ]
    return sorted(scored, key=lambda d: -d["score"])


@bentoml.service(name="search-ranker", traffic={"timeout": 10})
class SearchRanker:
    model = bentoml.models.BentoModel(MODEL_TAG) if MODEL_TAG else None

    def __init__(self) -> None:
        if self.model is None:
            raise RuntimeError("build this service with --arg model_tag=NAME:VERSION")
        with open(self.model.path_of(ARTIFACT_FILE), encoding="utf-8") as f:
            self.weights = json.load(f)

    @bentoml.api
    def rank(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Candidate documents (with bm25, click_rate, freshness), best first."""
        return rank_documents(self.weights, documents)
