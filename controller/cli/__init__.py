"""The ``mdc`` command: :mod:`controller.cli.main` parses and dispatches; the verbs
live by subject in :mod:`~controller.cli.records`, :mod:`~controller.cli.changes`,
:mod:`~controller.cli.machine` and :mod:`~controller.cli.run`. Called by the
``mdc`` console script and ``python -m controller``."""

__all__: list[str] = []
