"""``python -m controller``: the same entry point as the ``mdc`` console script."""

from controller.cli.main import main

raise SystemExit(main())
