"""The demo's chapter on previews: the search team turns them on in git, and each
pull request's search-ranker is run beside the stable one on half of the live
searches before anyone merges it.

Owns :func:`previews_on` (the commit that turns them on: a ``preview`` in the
``fast`` policy, and the field compared in the model), :func:`show_preview`
(waits for a PR's ``mdc/preview`` and prints its section of mdc's comment) and
:func:`tell_handover` (whether the promoted release is the process the preview
started). Called by :func:`controller.demo.run_demo`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from controller.demo import Demo

__all__ = ["previews_on", "show_preview", "tell_handover"]

RANKER = "search-ranker"


def previews_on(repo: Path) -> None:
    """Previews for search-ranker: its policy mirrors half of the stable's searches
    to a PR's version; its answers are compared by the overlap of the top 3."""
    policy = repo / "rollouts" / "fast.yaml"
    policy.write_text(
        policy.read_text().rstrip("\n")
        + "\n  preview:                   # each PR's version answers mirrored searches\n"
        "    share: 50\n    minPairs: 150\n    minAgreement: 0.95\n    maxLatencyRatio: 2\n"
    )
    model = repo / "models" / f"{RANKER}.yaml"
    model.write_text(
        model.read_text().rstrip("\n")
        + "\n  # a preview compares the top 3 of the two versions' rankings\n"
        "  preview: {field: id, kind: ranking, top: 3}\n"
    )


def show_preview(demo: Demo, number: int, out: TextIO) -> tuple[str, int | None] | None:
    """Wait for PR ``number``'s mdc/preview to be judged, print it; the preview's
    (release name, process id) when it runs."""
    assert demo.github is not None
    assert demo.reconciler is not None
    head = demo.github.pulls[number].head_sha
    deadline = time.monotonic() + 120
    judged = None
    while judged is None and time.monotonic() < deadline:
        states = [s for s in demo.github.statuses.get(head, []) if s["context"] == "mdc/preview"]
        judged = next((s for s in reversed(states) if s["state"] != "pending"), None)
        time.sleep(0.2)
    if judged is None:
        demo.say(f"PR #{number}'s preview was not judged in time")
        return None
    demo.say(f"mdc/preview on PR #{number}: {judged['state']}: {judged['description']}")
    body = demo.plan_comment(number)
    section = body[body.find("## mdc preview") :].split("<!-- mdc:", 1)[0] if body else ""
    for line in section.strip().splitlines()[:16]:
        print(f"    {line}", file=out)
    preview = demo.reconciler.previews.running.get(RANKER)
    if preview is None or preview.release is None:
        return None
    release = demo.reconciler.runtime.releases.get(preview.release.name)
    return preview.release.name, release.pid if release is not None else None


def tell_handover(demo: Demo, preview: tuple[str, int | None]) -> None:
    """Whether the promoted release is the process the preview started."""
    assert demo.reconciler is not None
    name, pid = preview
    status = demo.status(RANKER)
    release = demo.reconciler.runtime.releases.get(name)
    if status is not None and status.stable is not None and status.stable.name == name:
        same = release is not None and release.pid == pid
        demo.say(
            "the preview became the canary, then the stable: "
            + ("the same process, " if same else "")
            + "no second build or start"
        )
