"""What a major upgrade Job's pod says about its command (pure): still running, done with its
report, the preflight's problems, or a failure with the reason in the tool's own words.

The pod (pgherd.render.upgrade_jobs) runs `pgherd upgrade check | run | rollback` once; its
exit code says how it ended (pgherd.contract: 0 done, 2 the tool could not do its work, 3 the
preflight found problems) and its termination message is the command's JSON summary. A pod
that never got that far says so otherwise: its init container (the old binaries' copy) failed,
or the pod itself did (evicted, its node lost). Anything the operator cannot read as a summary
is a failure, with the text as it was, cut short for a condition's message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pgherd import contract
from pgherd.render.upgrade_jobs import CONTAINER, INIT_CONTAINER

Phase = Literal["running", "succeeded", "problems", "failed"]
# How much of an unreadable message is kept: its end, where a log's error is.
MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class UpgradeOutcome:
    """running: no result yet (or no pod yet). succeeded: `report` is the command's summary.
    problems: the preflight's `problems` (its report has them and `problemsLeftOut`, the
    number that did not fit). failed: `message` says why."""

    phase: Phase
    report: Mapping[str, Any] | None = None
    problems: tuple[Mapping[str, Any], ...] = ()
    message: str = ""
    exit_code: int | None = None


RUNNING = UpgradeOutcome("running")


def cut(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """The end of text, at most limit characters, marked where it was cut."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _terminated(statuses: Any, name: str) -> Mapping[str, Any] | None:
    for status in statuses or []:
        if status.get("name") == name:
            terminated = (status.get("state") or {}).get("terminated")
            return terminated if isinstance(terminated, Mapping) else None
    return None


def _summary(message: str) -> Mapping[str, Any] | None:
    try:
        report = json.loads(message)
    except ValueError:
        return None
    return report if isinstance(report, Mapping) else None


def _failed(container: str, terminated: Mapping[str, Any]) -> UpgradeOutcome:
    """`<container>: exit code N (Reason): <message>`, as the kubelet reported its end."""
    code, reason = terminated.get("exitCode"), terminated.get("reason")
    message = f"{container}: exit code {code}" + (f" ({reason})" if reason else "")
    if text := str(terminated.get("message") or "").strip():
        message += f": {cut(text)}"
    return UpgradeOutcome("failed", message=message, exit_code=code)


def read_outcome(pod: Mapping[str, Any] | None) -> UpgradeOutcome:
    """The outcome of the upgrade command in this pod (None: the Job has made none yet)."""
    if pod is None:
        return RUNNING
    status = pod.get("status") or {}
    main = _terminated(status.get("containerStatuses"), CONTAINER)
    return _before_the_command(status) if main is None else _the_commands(main)


def _before_the_command(status: Mapping[str, Any]) -> UpgradeOutcome:
    """The command has not ended: running, or the pod ended without it."""
    init = _terminated(status.get("initContainerStatuses"), INIT_CONTAINER)
    if init is not None and init.get("exitCode") != 0:
        return _failed(INIT_CONTAINER, init)
    if status.get("phase") == "Failed":  # evicted, its node lost, a deadline
        why = status.get("message") or status.get("reason") or "the pod failed"
        return UpgradeOutcome("failed", message=cut(str(why)))
    return RUNNING


def _the_commands(main: Mapping[str, Any]) -> UpgradeOutcome:
    code, report = main.get("exitCode"), _summary(str(main.get("message") or ""))
    if report is None:
        # Killed (OOMKilled, a signal) before its summary, or a log's tail: as it is.
        return _failed(CONTAINER, main)
    if code == contract.UPGRADE_EXIT_OK:
        return UpgradeOutcome("succeeded", report=report, exit_code=code)
    if code == contract.UPGRADE_EXIT_PROBLEMS:
        problems = tuple(p for p in report.get("problems") or [] if isinstance(p, Mapping))
        return UpgradeOutcome("problems", report=report, problems=problems, exit_code=code)
    if code == contract.UPGRADE_EXIT_ERROR and report.get("error"):
        message = cut(str(report["error"]))
        return UpgradeOutcome("failed", report=report, message=message, exit_code=code)
    return _failed(CONTAINER, main)
