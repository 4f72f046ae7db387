"""Train the iris-classifier and register it in MLflow, as a data scientist would.

``python artifacts/iris-classifier/train.py --tracking-uri URI --release 2
--alias candidate`` (``--release`` may repeat) fits a scikit-learn logistic
regression on the iris measurements that scikit-learn ships (nothing is
downloaded), seeded, logs the run's parameters and accuracy, and registers the
fitted model as a new version of ``iris-classifier``; ``--alias`` points the
alias at the last. Release 1 is the regularised baseline; release 2 fits closer
(a larger C) and answers some borderline flowers differently. Prints one line
``{"version": ..., "run_id": ...}`` per release.

Needs ``mlflow`` and ``scikit-learn`` (the model's service needs them too: see
``python.packages`` in ``models/iris-classifier.yaml``), not mdc.
"""

from __future__ import annotations

import argparse
import json
import sys

import mlflow
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

RELEASES = {1: {"C": 0.05, "max_iter": 500}, 2: {"C": 10.0, "max_iter": 2000}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--name", default="iris-classifier")
    parser.add_argument(
        "--release", type=int, choices=sorted(RELEASES), action="append", default=[]
    )
    parser.add_argument("--alias", default=None)
    args = parser.parse_args(argv)

    mlflow.set_tracking_uri(args.tracking_uri)
    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=7, stratify=y
    )
    for release in args.release or [1]:
        params = RELEASES[release]
        with mlflow.start_run(run_name=f"{args.name}-release-{release}") as run:
            model = LogisticRegression(random_state=0, **params).fit(x_train, y_train)
            mlflow.log_params(params)
            mlflow.log_metric("accuracy", float(model.score(x_test, y_test)))
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=args.name, input_example=x_test[:2]
            )
        version = str(info.registered_model_version)
        print(json.dumps({"version": version, "run_id": run.info.run_id}), flush=True)
    if args.alias:
        MlflowClient().set_registered_model_alias(args.name, args.alias, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
