"""mdc: a GitOps controller for model delivery.

A repository of declarative specs (``Model``, ``GPUPool``, ``RolloutPolicy``)
says which models run, on which pooled GPUs, rolled out how; mdc makes the
running world match it and writes what happened back into git.

The package is a pure core (spec loading and validation, planning, the canary
state machine, the GPU ledger) and adapters behind small protocols. The console
script ``mdc`` lives in :mod:`controller.cli.main`.
"""

__all__ = ["API_VERSION", "__version__"]

__version__ = "0.1.0"

#: The ``apiVersion`` every spec document carries.
API_VERSION = "mdc.dev/v1alpha1"
