"""The major upgrade's Jobs (pgherd.render.upgrade_jobs): golden files, the restricted Pod
Security Standard, what selects their pods, their command lines as the operand parses them;
and reading a finished pod's outcome (pgherd.controller.upgrade_outcome).

Regenerate the golden file after an intended change with PGHERD_UPDATE_GOLDEN=1 and review
the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pgherd import contract
from pgherd.controller.upgrade_outcome import MESSAGE_LIMIT, UpgradeOutcome, cut, read_outcome
from pgherd.operand import upgrade
from pgherd.render import labels, names, yaml_text
from pgherd.render.upgrade_jobs import (
    UpgradeImages,
    render_check_job,
    render_rollback_job,
    render_upgrade_job,
)
from pgherd_dev import kubelet
from tests.unit.clusters import SCENARIOS, make_cluster

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "upgrade" / "jobs.yaml"
IMAGES = UpgradeImages(
    old_major=15,
    old_image="registry.example/pgherd/postgres:15-0.2.0",
    new_major=18,
    new_image="registry.example/pgherd/postgres:18-0.2.0",
)
CLAIM = names.data_claim("db", 0)
Manifest = dict[str, Any]


def jobs(spec: dict[str, Any] | None = None) -> list[Manifest]:
    cluster = make_cluster(spec)
    return [
        render_check_job(cluster, IMAGES, method="link"),
        render_upgrade_job(cluster, IMAGES, method="link", claim=CLAIM),
        render_rollback_job(cluster, IMAGES, claim=CLAIM),
    ]


def test_golden() -> None:
    customised = make_cluster(SCENARIOS["customised"])
    rendered = yaml_text.dump_all(
        [
            *jobs(),
            # Storage class, resources and placement of a customised cluster; clone, a grown
            # scratch size, a forced rollback.
            render_check_job(customised, IMAGES, method="clone", scratch_size="30Gi"),
            render_rollback_job(customised, IMAGES, claim=names.data_claim("db", 2), force=True),
        ]
    )
    if os.environ.get("PGHERD_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(rendered, encoding="utf-8")
    assert rendered == GOLDEN.read_text(encoding="utf-8"), "PGHERD_UPDATE_GOLDEN=1 to accept"


def test_names_and_the_jobs_one_pod() -> None:
    assert [j["metadata"]["name"] for j in jobs()] == [
        "db-upgrade-check",
        "db-upgrade",
        "db-upgrade-rollback",
    ]
    assert CLAIM == "pgdata-db-0"  # the StatefulSet's claim template `pgdata`, pod db-0
    for job in jobs():
        assert job["apiVersion"] == "batch/v1"
        # The operator decides about retries; no second pod ever works on the volume.
        assert job["spec"]["backoffLimit"] == 0
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (owner,) = job["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == (
            "PostgresCluster",
            "db",
            True,
        )
        assert [c["name"] for c in pod["initContainers"]] == ["old-binaries"]
        assert pod["initContainers"][0]["image"] == IMAGES.old_image
        assert [c["name"] for c in pod["containers"]] == ["upgrade"]
        assert pod["containers"][0]["image"] == IMAGES.new_image
        main = pod["containers"][0]
        assert main["terminationMessagePath"] == "/dev/termination-log"
        assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"


# ---- the restricted Pod Security Standard ------------------------------------------------
# The volume types the restricted profile allows (no hostPath among them).
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def restricted_violations(pod: Manifest) -> list[str]:
    """What in a pod spec the restricted Pod Security Standard (v1.25+) forbids."""
    found = [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    ctx = pod.get("securityContext") or {}
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {v['name']}: {sorted(kinds)}")
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            found.append(f"{name}: capabilities not dropped")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if not sc.get("runAsNonRoot", ctx.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", ctx.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", ctx.get("seccompProfile")) or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_pods_meet_the_restricted_pod_security_standard(scenario: str) -> None:
    for job in jobs(SCENARIOS[scenario]):
        pod = job["spec"]["template"]["spec"]
        assert restricted_violations(pod) == [], job["metadata"]["name"]
        # As the instance pods, and more: nothing here calls the API.
        assert pod["securityContext"]["runAsUser"] == contract.POSTGRES_UID
        assert pod["securityContext"]["fsGroup"] == contract.POSTGRES_GID
        assert pod["automountServiceAccountToken"] is False
        for c in [*pod["initContainers"], *pod["containers"]]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_restricted_violations_finds_what_it_looks_for() -> None:
    # Guards the check itself.
    pod = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }
    assert restricted_violations(pod) == [
        "spec.hostNetwork",
        "volume h: ['hostPath']",
        "c: privileged",
        "c: allowPrivilegeEscalation",
        "c: capabilities not dropped",
        "c: runAsNonRoot",
        "c: seccompProfile",
    ]


def test_writable_only_where_needed() -> None:
    for job in jobs():
        pod = job["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert [(m["mountPath"], m.get("readOnly", False)) for m in init["volumeMounts"]] == [
            ("/old", False)
        ]
        writable = {
            m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if not m.get("readOnly")
        }
        work = "/scratch" if job["metadata"]["name"].endswith("-check") else contract.DATA_MOUNT
        assert writable == {"/tmp", work}  # noqa: S108


# ---- what finds the pods -----------------------------------------------------------------
def test_the_test_kubelet_runs_the_pods_and_nothing_takes_them_for_instances() -> None:
    instance = labels.selector_labels("db")
    for job in jobs():
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert pod_labels[labels.MANAGED_BY] == "pgherd"
        assert pod_labels[labels.COMPONENT] == "upgrade"
        assert "upgrade" in kubelet.COMPONENTS and kubelet.SELECTOR.startswith(
            "app.kubernetes.io/managed-by=pgherd,app.kubernetes.io/component in ("
        )
        # The operator's caches hold what is labelled for the cluster ...
        assert pod_labels[labels.CLUSTER] == "db"
        # ... but the StatefulSet, the -r and -headless Services, Patroni and the operator's
        # members select instances by these, which an upgrade pod must not match.
        assert not all(pod_labels.get(k) == v for k, v in instance.items())


def test_placement_is_the_clusters_nodes_without_the_instances_anti_affinity() -> None:
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
            ]
        }
    }
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "x"}]}
    spec = {
        "scheduling": {
            "antiAffinity": "required",
            "affinity": {"nodeAffinity": node_affinity, "podAntiAffinity": anti},
            "nodeSelector": {"pool": "db"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        }
    }
    for job in jobs(spec):
        pod = job["spec"]["template"]["spec"]
        assert pod["affinity"] == {"nodeAffinity": node_affinity}
        assert pod["nodeSelector"] == {"pool": "db"}
        assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
        assert "topologySpreadConstraints" not in pod
    for job in jobs():
        assert "affinity" not in job["spec"]["template"]["spec"]


# ---- the command lines, as the operand reads them ----------------------------------------
def _parsed(job: Manifest) -> Any:
    """The main container's command parsed by `pgherd upgrade`'s own parser, with the
    container's plain environment values (PGDATA)."""
    main = job["spec"]["template"]["spec"]["containers"][0]
    assert main["command"][:2] == ["pgherd", "upgrade"]
    env = {e["name"]: e["value"] for e in main["env"] if "value" in e}
    return upgrade.parser(env).parse_args(main["command"][2:])


def test_the_commands_parse_and_name_the_binaries_and_the_data() -> None:
    check, run, rollback = (_parsed(j) for j in jobs())
    for args in (check, run, rollback):
        assert args.old_bindir == "/old/usr/lib/postgresql/15/bin"
        assert args.new_bindir == "/usr/lib/postgresql/18/bin"
        assert args.report_file == "/dev/termination-log"
    assert (check.action, check.method, check.work_dir) == ("check", "link", "/scratch/check")
    assert check.source_pgdata is None
    assert (run.action, run.method, run.pgdata) == ("run", "link", contract.PGDATA)
    assert (rollback.action, rollback.force, rollback.pgdata) == (
        "rollback",
        False,
        contract.PGDATA,
    )
    cluster = make_cluster()
    forced = _parsed(render_rollback_job(cluster, IMAGES, claim=CLAIM, force=True))
    assert forced.force is True
    for method in contract.UPGRADE_METHODS:
        assert _parsed(render_check_job(cluster, IMAGES, method=method)).method == method


def test_the_old_binaries_keep_their_layout_under_old() -> None:
    (init,) = jobs()[0]["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == [
        "/bin/sh",
        "-c",
        "set -e; mkdir -p /old/usr/lib/postgresql /old/usr/share/postgresql; "
        "cp -a /usr/lib/postgresql/15 /old/usr/lib/postgresql/; "
        "if [ -d /usr/share/postgresql/15 ]; then "
        "cp -a /usr/share/postgresql/15 /old/usr/share/postgresql/; fi",
    ]


def test_the_preflight_reaches_the_primary_over_tls_as_the_replication_role() -> None:
    check = jobs()[0]
    pod = check["spec"]["template"]["spec"]
    main = pod["containers"][0]
    conninfo = _parsed(check).source_conninfo
    assert conninfo == "application_name=pgherd-upgrade-check"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in main["env"]}
    # The primary by its Service's name, where cluster DNS resolves it; the check moves them
    # into the source's conninfo (pg_upgrade refuses a remote PGHOST).
    assert env["PGHOST"] == "db-rw.prod.svc"
    assert env["PGPORT"] == "5432"
    assert env["PGUSER"] == {"secretKeyRef": {"name": "db-replication", "key": "username"}}
    assert env["PGSSLMODE"] == "verify-full"
    assert env["PGSSLROOTCERT"] == "/etc/pgherd-tls/ca.crt"
    assert env["PGSSLCERT"] == "/etc/pgherd-tls/replication.crt"
    assert env["PGSSLKEY"] == "/etc/pgherd-tls/replication.key"
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "db-tls"
    assert [i["key"] for i in tls["secret"]["items"]] == [
        "ca.crt",
        "replication.crt",
        "replication.key",
    ]
    assert tls["secret"]["defaultMode"] == 0o600  # fsGroup makes it 0640, root's


@pytest.mark.parametrize(
    ("spec", "size", "want"),
    [
        (
            {},
            None,
            {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        ),
        (
            {"storage": {"size": "20Gi", "storageClassName": "fast-ssd"}},
            "24Gi",
            {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "24Gi"}},
                "storageClassName": "fast-ssd",
            },
        ),
    ],
)
def test_the_scratch_volume_is_like_the_data_volumes(
    spec: Manifest, size: str | None, want: Manifest
) -> None:
    check = render_check_job(make_cluster(spec), IMAGES, method="clone", scratch_size=size)
    (scratch,) = [v for v in check["spec"]["template"]["spec"]["volumes"] if v["name"] == "scratch"]
    template = scratch["ephemeral"]["volumeClaimTemplate"]
    assert template["spec"] == want
    assert template["metadata"]["labels"] == labels.upgrade_labels("db")


def test_the_upgrade_pods_mount_the_claim_where_instances_mount_their_data() -> None:
    for job in jobs()[1:]:
        pod = job["spec"]["template"]["spec"]
        (data,) = [v for v in pod["volumes"] if v["name"] == contract.DATA_VOLUME]
        assert data == {"name": "pgdata", "persistentVolumeClaim": {"claimName": "pgdata-db-0"}}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["pgdata"] == contract.DATA_MOUNT


def test_resources_are_the_instances() -> None:
    resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    for job in jobs({"resources": resources}):
        pod = job["spec"]["template"]["spec"]
        for c in [*pod["initContainers"], *pod["containers"]]:
            assert c["resources"] == resources


# ---- reading the outcome -----------------------------------------------------------------
def _pod(main: Manifest | None = None, init: Manifest | None = None, **status: Any) -> Manifest:
    out: Manifest = {"status": {"phase": "Running", **status}}
    if init is not None:
        out["status"]["initContainerStatuses"] = [{"name": "old-binaries", "state": init}]
    if main is not None:
        out["status"]["containerStatuses"] = [{"name": "upgrade", "state": main}]
    return out


def _ended(code: int, message: str | None = None, reason: str = "Error") -> Manifest:
    terminated: Manifest = {"exitCode": code, "reason": reason}
    if message is not None:
        terminated["message"] = message
    return {"terminated": terminated}


PROBLEMS = [{"check": "extension", "subject": "adminpack in database app", "severity": "error"}]
CHECK_REPORT = {"ok": False, "problems": PROBLEMS, "problemsLeftOut": 2, "oldVersion": "15.8"}
RUN_REPORT = {"ok": True, "state": "swapped", "resumed": False, "method": "link"}
LOG_TAIL = "Traceback (most recent call last):\n" + "x" * 3000 + "\nOSError: disk full"


@pytest.mark.parametrize(
    ("pod", "want"),
    [
        pytest.param(None, UpgradeOutcome("running"), id="no pod yet"),
        pytest.param(_pod(), UpgradeOutcome("running"), id="scheduled"),
        pytest.param(
            _pod(init={"running": {}}, main={"waiting": {"reason": "PodInitializing"}}),
            UpgradeOutcome("running"),
            id="copying",
        ),
        pytest.param(
            _pod(init=_ended(0, reason="Completed"), main={"running": {}}),
            UpgradeOutcome("running"),
            id="main running",
        ),
        pytest.param(
            _pod(main=_ended(0, json.dumps(RUN_REPORT), "Completed"), phase="Succeeded"),
            UpgradeOutcome("succeeded", report=RUN_REPORT, exit_code=0),
            id="done",
        ),
        pytest.param(
            _pod(main=_ended(3, json.dumps(CHECK_REPORT)), phase="Failed"),
            UpgradeOutcome("problems", report=CHECK_REPORT, problems=tuple(PROBLEMS), exit_code=3),
            id="preflight problems",
        ),
        pytest.param(
            _pod(
                main=_ended(2, json.dumps({"ok": False, "error": "a server runs"})), phase="Failed"
            ),
            UpgradeOutcome(
                "failed",
                report={"ok": False, "error": "a server runs"},
                message="a server runs",
                exit_code=2,
            ),
            id="tool error",
        ),
        pytest.param(
            _pod(main=_ended(2, "usage: pgherd upgrade run [-h]\nerror: bad"), phase="Failed"),
            UpgradeOutcome(
                "failed",
                message="upgrade: exit code 2 (Error): usage: pgherd upgrade run [-h]\nerror: bad",
                exit_code=2,
            ),
            id="log tail, no summary",
        ),
        pytest.param(
            _pod(main=_ended(137, reason="OOMKilled"), phase="Failed"),
            UpgradeOutcome("failed", message="upgrade: exit code 137 (OOMKilled)", exit_code=137),
            id="killed",
        ),
        pytest.param(
            _pod(main=_ended(0, "", "Completed"), phase="Succeeded"),
            UpgradeOutcome("failed", message="upgrade: exit code 0 (Completed)", exit_code=0),
            id="success without summary",
        ),
        pytest.param(
            _pod(main=_ended(3, "[1, 2]"), phase="Failed"),
            UpgradeOutcome("failed", message="upgrade: exit code 3 (Error): [1, 2]", exit_code=3),
            id="summary not an object",
        ),
        pytest.param(
            _pod(main=_ended(1, LOG_TAIL), phase="Failed"),
            UpgradeOutcome(
                "failed", message=f"upgrade: exit code 1 (Error): {cut(LOG_TAIL)}", exit_code=1
            ),
            id="long log cut",
        ),
        pytest.param(
            _pod(
                init=_ended(1, "cp: cannot stat '/usr/lib/postgresql/15': No such file\n"),
                main={"waiting": {"reason": "PodInitializing"}},
                phase="Failed",
            ),
            UpgradeOutcome(
                "failed",
                message="old-binaries: exit code 1 (Error): cp: cannot stat "
                "'/usr/lib/postgresql/15': No such file",
                exit_code=1,
            ),
            id="copy failed",
        ),
        pytest.param(
            _pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory."),
            UpgradeOutcome("failed", message="The node was low on resource: memory."),
            id="evicted",
        ),
        pytest.param(
            _pod(phase="Failed", reason="DeadlineExceeded"),
            UpgradeOutcome("failed", message="DeadlineExceeded"),
            id="pod failed, reason only",
        ),
    ],
)
def test_read_outcome(pod: Manifest | None, want: UpgradeOutcome) -> None:
    assert read_outcome(pod) == want


def test_a_cut_message_keeps_its_end() -> None:
    assert cut("short") == "short"
    long = cut(LOG_TAIL)
    assert len(long) == MESSAGE_LIMIT
    assert long.startswith("…")
    assert long.endswith("OSError: disk full")


def test_the_reader_reads_what_the_tool_writes() -> None:
    # The summary as `pgherd upgrade --report-file` writes it, with problems left out.
    report = {"ok": False, "problems": [{**PROBLEMS[0], "message": "m" * 900}] * 20}
    text = upgrade.summary(report)
    outcome = read_outcome(_pod(main=_ended(3, text), phase="Failed"))
    assert outcome.phase == "problems"
    assert outcome.report is not None and outcome.report["problemsLeftOut"] > 0
    assert 0 < len(outcome.problems) < 20
