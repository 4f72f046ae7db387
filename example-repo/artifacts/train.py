"""Train the example repository's tiny models and write their weights as JSON.

Run from anywhere: ``python artifacts/train.py``. Pure Python and seeded, so
the files it writes are byte-for-byte the ones committed next to it (a test in
mdc checks this). No pickle: weights are plain JSON a reviewer can read.

* fraud-scorer: logistic regression over four transaction features, trained on
  synthetic transactions where fraud grows with amount, a foreign merchant, the
  hour of night and the number of recent declines. v2 trains longer on more data.
* search-ranker: a linear relevance model over query/document features, trained
  with a pairwise (RankNet-style) logistic loss on synthetic judgements. v2 trains
  longer on more pairs; v3 adds a fourth feature, ``dwell_time``, that documents
  from the older indexer do not carry (the demo's release that fails under load).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRAUD_FEATURES = ["amount_log", "foreign_merchant", "night_hour", "recent_declines"]
RANK_FEATURES = ["bm25", "click_rate", "freshness"]


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def fraud_data(rng: random.Random, n: int) -> list[tuple[list[float], int]]:
    true_w, true_b = [1.2, 1.5, 0.8, 1.1], -4.0
    rows = []
    for _ in range(n):
        x = [rng.uniform(0, 4), float(rng.random() < 0.2), float(rng.random() < 0.3), rng.uniform(0, 3)]
        p = sigmoid(sum(w * v for w, v in zip(true_w, x)) + true_b)
        rows.append((x, int(rng.random() < p)))
    return rows


def train_logistic(rows: list[tuple[list[float], int]], epochs: int, lr: float) -> tuple[list[float], float]:
    w, b = [0.0] * len(rows[0][0]), 0.0
    for _ in range(epochs):
        gw, gb = [0.0] * len(w), 0.0
        for x, y in rows:
            err = sigmoid(sum(wi * xi for wi, xi in zip(w, x)) + b) - y
            gw = [g + err * xi for g, xi in zip(gw, x)]
            gb += err
        w = [wi - lr * g / len(rows) for wi, g in zip(w, gw)]
        b -= lr * gb / len(rows)
    return w, b


def accuracy(rows: list[tuple[list[float], int]], w: list[float], b: float) -> float:
    hits = sum((sigmoid(sum(wi * xi for wi, xi in zip(w, x)) + b) >= 0.5) == bool(y) for x, y in rows)
    return hits / len(rows)


def train_ranker(
    rng: random.Random, pairs: int, epochs: int, lr: float, true_w: list[float] | None = None
) -> list[float]:
    true_w = true_w or [0.7, 1.3, 0.4]
    data = []
    for _ in range(pairs):
        a = [rng.uniform(0, 1) for _ in true_w]
        c = [rng.uniform(0, 1) for _ in true_w]
        better = sum(w * v for w, v in zip(true_w, a)) > sum(w * v for w, v in zip(true_w, c))
        data.append(([ai - ci for ai, ci in zip(a, c)], int(better)))
    w = [0.0] * len(true_w)
    for _ in range(epochs):
        grad = [0.0] * len(w)
        for diff, y in data:
            err = sigmoid(sum(wi * d for wi, d in zip(w, diff))) - y
            grad = [g + err * d for g, d in zip(grad, diff)]
        w = [wi - lr * g / len(data) for wi, g in zip(w, grad)]
    return w


def write(path: Path, body: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main() -> None:
    for version, seed, n, epochs in (("v1", 7, 400, 60), ("v2", 11, 800, 150)):
        rng = random.Random(seed)
        train, test = fraud_data(rng, n), fraud_data(rng, 200)
        w, b = train_logistic(train, epochs, lr=0.5)
        write(
            HERE / "fraud-scorer" / f"{version}.json",
            {
                "format": "mdc-example/logistic-regression@1",
                "features": FRAUD_FEATURES,
                "weights": [round(v, 6) for v in w],
                "bias": round(b, 6),
                "training": {"seed": seed, "rows": n, "epochs": epochs,
                             "testAccuracy": round(accuracy(test, w, b), 4)},
            },
        )
    for version, seed, pairs, epochs, features, true_w in (
        ("v1", 3, 500, 80, RANK_FEATURES, None),
        ("v2", 5, 1000, 160, RANK_FEATURES, None),
        ("v3", 9, 1000, 160, [*RANK_FEATURES, "dwell_time"], [0.7, 1.3, 0.4, 0.9]),
    ):
        w = train_ranker(random.Random(seed), pairs=pairs, epochs=epochs, lr=1.0, true_w=true_w)
        write(
            HERE / "search-ranker" / f"{version}.json",
            {
                "format": "mdc-example/linear-ranker@1",
                "features": features,
                "weights": [round(v, 6) for v in w],
                "training": {"seed": seed, "pairs": pairs, "epochs": epochs},
            },
        )


if __name__ == "__main__":
    main()
