"""The test kubelet's one-shot pods, their pure decisions: what a container's exit leads to
under each restartPolicy, which termination message is reported, where an emptyDir shared
by init containers lives, which claim a volume is (a generic ephemeral volume's too), and
the kwok stages that leave the kubelet's pods alone.
(The pods themselves run in tests/cluster/test_kubelet_one_shot.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pgherd_dev.controlplane import kubelet_pods_query, stages_without_kubelet_pods
from pgherd_dev.kubelet import (
    COMPONENTS,
    SELECTOR,
    _tail_bytes,
    empty_dir_homes,
    exit_outcome,
    termination_message,
    volume_claim,
)

# (restartPolicy, exit code, init container?) -> outcome
EXITS = [
    ("Always", 0, False, "restart"),
    ("Always", 1, False, "restart"),
    ("Always", 137, False, "restart"),
    ("OnFailure", 0, False, "Succeeded"),
    ("OnFailure", 3, False, "restart"),
    ("Never", 0, False, "Succeeded"),
    ("Never", 3, False, "Failed"),
    ("Never", 137, False, "Failed"),
    ("Always", 0, True, "next"),
    ("OnFailure", 0, True, "next"),
    ("Never", 0, True, "next"),
    ("Always", 2, True, "restart"),
    ("OnFailure", 2, True, "restart"),
    ("Never", 2, True, "Failed"),
]


@pytest.mark.parametrize(("policy", "code", "init", "expected"), EXITS)
def test_exit_outcome(policy: str, code: int, init: bool, expected: str) -> None:
    assert exit_outcome(policy, code, init=init) == expected


LOG = b"".join(f"line {i}\n".encode() for i in range(100))
LONG_LINES = b"".join(b"x" * 99 + b"\n" for _ in range(30))

# (file content, exit code, policy, log tail) -> message
MESSAGES = [
    (b"done", 0, "File", LOG, "done"),
    (b"failed: disk", 3, "File", LOG, "failed: disk"),
    (b"", 3, "File", LOG, ""),  # File: the log is never read
    (b"", 0, "FallbackToLogsOnError", LOG, ""),  # exit 0: no fallback
    (b"written", 3, "FallbackToLogsOnError", LOG, "written"),  # the file wins
    (
        b"",
        3,
        "FallbackToLogsOnError",
        LOG,
        "".join(f"line {i}\n" for i in range(20, 100)),  # the last 80 lines
    ),
    # 80 lines are 3000 bytes: the last 2048 of them, cutting into a line.
    (b"", 1, "FallbackToLogsOnError", LONG_LINES, "x" * 47 + "\n" + ("x" * 99 + "\n") * 20),
    (b"a" * 5000 + b"END", 0, "File", b"", ("a" * 5000 + "END")[-4096:]),  # the last 4 KiB
    (b"\xff ok", 0, "File", b"", "\ufffd ok"),  # not UTF-8: replaced, not refused
]


@pytest.mark.parametrize(("written", "code", "policy", "log", "expected"), MESSAGES)
def test_termination_message(
    written: bytes, code: int, policy: str, log: bytes, expected: str
) -> None:
    message = termination_message(written, code, policy, log)
    assert message == expected
    assert len(message.encode(errors="replace")) <= 4096


def test_tail_bytes_reads_the_end_of_a_run(tmp_path: Path) -> None:
    log = tmp_path / "container.log"
    log.write_bytes(b"earlier run\n--- start\nthis run\n")
    start = len(b"earlier run\n--- start\n")
    assert _tail_bytes(log, 2048, start) == b"this run\n"
    assert _tail_bytes(log, 4, start) == b"run\n"
    assert _tail_bytes(tmp_path / "missing", 10) == b""


def _pod(init_mounts: list[list[tuple[str, str]]], main: list[tuple[str, str]]) -> dict[str, Any]:
    def container(name: str, mounts: list[tuple[str, str]]) -> dict[str, Any]:
        return {"name": name, "volumeMounts": [{"name": n, "mountPath": p} for n, p in mounts]}

    return {
        "spec": {
            "volumes": [
                {"name": "bin", "emptyDir": {}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "c"}},
            ],
            "initContainers": [container(f"i{n}", m) for n, m in enumerate(init_mounts)],
            "containers": [container("main", main)],
        }
    }


HOMES = [
    ("no init containers", [], [("bin", "/bin-dir")], {"bin": "/bin-dir"}),
    (
        "the main container's path wins",
        [[("bin", "/old")]],
        [("bin", "/usr/lib/old")],
        {"bin": "/usr/lib/old"},
    ),
    (
        "only init containers mount it: the first one's",
        [[("scratch", "/a")], [("scratch", "/b")]],
        [("bin", "/x")],
        {"scratch": "/a", "bin": "/x"},
    ),
    ("not emptyDirs", [[("config", "/c1")]], [("config", "/c2")], {}),
]


@pytest.mark.parametrize(
    ("init", "main", "expected"), [h[1:] for h in HOMES], ids=[h[0] for h in HOMES]
)
def test_empty_dir_homes(
    init: list[list[tuple[str, str]]], main: list[tuple[str, str]], expected: dict[str, str]
) -> None:
    assert empty_dir_homes(_pod(init, main)) == expected


@pytest.mark.parametrize(
    ("volume", "claim"),
    [
        ({"persistentVolumeClaim": {"claimName": "pgdata-db-0"}}, "pgdata-db-0"),
        # The ephemeral volume controller's name for the claim it makes for the pod.
        ({"ephemeral": {"volumeClaimTemplate": {"spec": {}}}}, "db-upgrade-check-x7k2p-scratch"),
        ({"emptyDir": {}}, None),
    ],
)
def test_volume_claim(volume: dict[str, Any], claim: str | None) -> None:
    pod = {"metadata": {"name": "db-upgrade-check-x7k2p"}}
    assert volume_claim(pod, {"name": "scratch", **volume}) == claim


def test_selector_runs_upgrade_pods() -> None:
    assert SELECTOR == (
        "app.kubernetes.io/managed-by=pgherd,"
        "app.kubernetes.io/component in (database,pooler,upgrade)"
    )


def _stage(name: str, expressions: list[dict[str, Any]], then: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": expressions},
            "next": then,
        },
    }


# kwok's pod stages, in short (the real ones: kustomize/stage/pod/fast in kwok's module).
STAGES = "---\n".join(
    yaml.safe_dump(stage)
    for stage in (
        _stage(
            "pod-ready",
            [{"key": ".status.phase", "operator": "In", "values": ["Pending"]}],
            {"statusTemplate": "phase: Running\n"},
        ),
        _stage(
            "pod-complete",
            [
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
            ],
            {"statusTemplate": "{{ $now := Now }}\nphase: Succeeded\n"},
        ),
        _stage(
            "pod-delete",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"delete": True},
        ),
    )
)


def test_stages_leave_the_kubelets_pods_to_it() -> None:
    before = list(yaml.safe_load_all(STAGES))
    after = list(yaml.safe_load_all(stages_without_kubelet_pods(STAGES)))
    assert [s["metadata"]["name"] for s in after] == ["pod-ready", "pod-complete", "pod-delete"]
    # pod-ready and pod-delete stay kwok's own; pod-complete gains one requirement.
    assert after[0] == before[0]
    assert after[2] == before[2]
    expressions = after[1]["spec"]["selector"]["matchExpressions"]
    assert expressions[:-1] == before[1]["spec"]["selector"]["matchExpressions"]
    assert expressions[-1] == {"key": kubelet_pods_query(), "operator": "NotIn", "values": ["true"]}
    # The status template survives as written (a block literal, not a folded string).
    assert after[1]["spec"]["next"] == before[1]["spec"]["next"]
    assert "statusTemplate: |" in stages_without_kubelet_pods(STAGES)


def test_kubelet_pods_query_names_the_kubelets_selector() -> None:
    query = kubelet_pods_query()
    assert query.startswith('.metadata.labels["app.kubernetes.io/managed-by"] == "pgherd" and ')
    assert '.metadata.labels["app.kubernetes.io/component"] | ' in query
    for component in COMPONENTS:
        assert f'. == "{component}"' in query
