"""One-shot pods in the test kubelet, as the operator's upgrade pods will be: Jobs whose pods
(component upgrade, restartPolicy Never) run init containers to completion, then the main
container once; the result is on the pod (phase, exit code, termination message) and the job
controller of the real kube-controller-manager finishes the Job from it. kwok's pod-complete
stage must not mark these pods Succeeded without running them."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import wait_for

pytestmark = pytest.mark.cluster

LABELS = {"app.kubernetes.io/managed-by": "pgherd", "app.kubernetes.io/component": "upgrade"}
# Host mode: the pod's paths are mapped under PGHERD_ROOT (the termination message's too).
ROOT = "${PGHERD_ROOT:-}"


def _sh(name: str, script: str, mount_at: str | None = None, **extra: Any) -> dict[str, Any]:
    """A container running a shell script, with the pod's emptyDir at mount_at."""
    mounts = [] if mount_at is None else [{"name": "handoff", "mountPath": mount_at}]
    return {
        "name": name,
        "image": "example.invalid/upgrade:1",
        "command": ["/bin/sh", "-c", script],
        "volumeMounts": mounts,
        **extra,
    }


def _run_job(
    api: client.ApiClient,
    namespace: str,
    name: str,
    until: str,
    main: dict[str, Any],
    init: list[dict[str, Any]],
) -> Any:
    """Create a Job of one pod that may not be retried, wait for its condition `until`
    (Complete or Failed), and return its only pod."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    template = {
        "metadata": {"labels": LABELS},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "handoff", "emptyDir": {}}],
            "initContainers": init,
            "containers": [main],
        },
    }
    batch.create_namespaced_job(
        namespace,
        {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": template}},
    )

    def finished() -> Any:
        job = batch.read_namespaced_job(name, namespace)
        conditions = {c.type: c.status for c in job.status.conditions or []}
        return conditions.get(until) == "True" or conditions

    wait_for(f"Job {name} {until}", lambda: finished() is True, timeout=45)
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]  # backoffLimit 0: no second pod
    return pods[0]


def _starts(cp: ControlPlane, namespace: str, pod: Any, container: str) -> int:
    log = cp.workdir / "pods" / namespace / pod.metadata.name / pod.metadata.uid / "container.log"
    return sum(
        1
        for line in log.read_text().splitlines()
        if line.startswith("--- start") and line.endswith(f"({container})")
    )


def test_init_container_hands_over_and_the_job_completes(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    begin = time.monotonic()
    # The same emptyDir at another path in each container, as the old binaries will be.
    pod = _run_job(
        api,
        namespace,
        "check",
        "Complete",
        main=_sh("upgrade", f'cat "{ROOT}/in/report" > "{ROOT}/dev/termination-log"', "/in"),
        init=[_sh("copy-old", f'echo "old binaries: 15.8" > "{ROOT}/out/report"', "/out")],
    )
    assert pod.status.phase == "Succeeded"
    (init,) = pod.status.init_container_statuses
    assert init.name == "copy-old"
    assert init.state.terminated.exit_code == 0
    assert init.state.terminated.reason == "Completed"
    (main,) = pod.status.container_statuses
    terminated = main.state.terminated
    assert terminated.exit_code == 0
    assert terminated.reason == "Completed"
    assert terminated.message == "old binaries: 15.8\n"
    assert terminated.started_at is not None
    assert terminated.finished_at is not None
    assert main.restart_count == 0
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["Initialized"] == "True"
    assert conditions["Ready"] == "False"
    assert time.monotonic() - begin < 30


def test_failed_main_container_fails_the_job_and_is_not_restarted(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    script = f'echo "preflight: 2 problems" > "{ROOT}/dev/termination-log"; exit 3'
    pod = _run_job(api, namespace, "refused", "Failed", main=_sh("upgrade", script), init=[])
    assert pod.status.phase == "Failed"
    (main,) = pod.status.container_statuses
    assert main.state.terminated.exit_code == 3
    assert main.state.terminated.reason == "Error"
    assert main.state.terminated.message == "preflight: 2 problems\n"
    assert main.restart_count == 0
    # Longer than the kubelet's first back-off (1 s): a restart would have happened by now.
    time.sleep(2.0)
    assert _starts(control_plane, namespace, pod, "upgrade") == 1
    core = client.CoreV1Api(api)
    assert core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Failed"


def test_failed_init_container_fails_the_pod_with_its_log_as_message(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    copy = _sh(
        "copy-old",
        "echo 'cp: /usr/lib/postgresql/15: No such file' >&2; exit 4",
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    pod = _run_job(
        api, namespace, "no-binaries", "Failed", main=_sh("upgrade", "exit 0"), init=[copy]
    )
    assert pod.status.phase == "Failed"
    (init,) = pod.status.init_container_statuses
    assert init.state.terminated.exit_code == 4
    assert init.state.terminated.message == "cp: /usr/lib/postgresql/15: No such file\n"
    (main,) = pod.status.container_statuses
    assert main.state.waiting is not None  # never started
    assert main.state.terminated is None
    assert _starts(control_plane, namespace, pod, "upgrade") == 0
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["Initialized"] == "False"
