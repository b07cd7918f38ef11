"""`pgherd instance` on this machine's files: TLS files copied privately and kept current,
Patroni's configuration with its TLS paths and the superuser's password from a file, and a
previous container's socket locks cleared."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from pgherd import contract
from pgherd.operand import tls_files
from pgherd.operand.instance import ConfigFile, clear_stale_socket_locks, final_config
from pgherd.render.patroni_config import patroni_config
from tests.unit.clusters import make_cluster


@pytest.fixture
def pod(tmp_path: Path) -> dict[str, str]:
    """A pod's root (PGHERD_ROOT) with the mounted superuser password and TLS Secret."""
    secret = tmp_path / contract.SUPERUSER_PASSWORD_FILE.lstrip("/")
    secret.parent.mkdir(parents=True)
    secret.write_text("first-password")
    tls = tmp_path / contract.TLS_MOUNT.lstrip("/")
    tls.mkdir(parents=True)
    for name in contract.TLS_FILES:
        (tls / name).write_text(f"<{name} 1>")
    (tmp_path / "bin" / "15" / "bin").mkdir(parents=True)
    (tmp_path / "bin" / "15" / "bin" / "postgres").write_text("")
    return {"PGHERD_ROOT": str(tmp_path), "PGHERD_PG_BIN_DIR": str(tmp_path / "bin/15/bin")}


def test_tls_files_are_copied_private_and_only_when_changed(pod: dict[str, str]) -> None:
    root = Path(pod["PGHERD_ROOT"])
    source, target = root / contract.TLS_MOUNT.lstrip("/"), root / contract.TLS_DIR.lstrip("/")
    assert sorted(tls_files.sync(source, target)) == sorted(contract.TLS_FILES)
    assert tls_files.missing(target) == []
    assert {stat.S_IMODE((target / n).stat().st_mode) for n in contract.TLS_FILES} == {0o600}
    assert tls_files.sync(source, target) == []
    (source / contract.TLS_CERT).write_text("<renewed>")
    assert tls_files.sync(source, target) == [contract.TLS_CERT]
    assert (target / contract.TLS_CERT).read_text() == "<renewed>"


def test_a_renewal_reloads_once(pod: dict[str, str]) -> None:
    root = Path(pod["PGHERD_ROOT"])
    source, target = root / contract.TLS_MOUNT.lstrip("/"), root / contract.TLS_DIR.lstrip("/")
    tls_files.sync(source, target)
    reloaded = threading.Event()
    stop = threading.Event()
    thread = tls_files.keep_current(source, target, reloaded.set, stop, every=0.05)
    (source / contract.TLS_KEY).write_text("<new key>")
    assert reloaded.wait(5)
    stop.set()
    thread.join(5)
    assert (target / contract.TLS_KEY).read_text() == "<new key>"


def test_the_configuration_roots_tls_paths_and_takes_the_password_from_its_file(
    pod: dict[str, str],
) -> None:
    root = pod["PGHERD_ROOT"]
    config = final_config(patroni_config(make_cluster()), pod)
    tls = f"{root}{contract.TLS_DIR}"
    assert config["restapi"]["certfile"] == f"{tls}/tls.crt"
    assert config["ctl"]["cacert"] == f"{tls}/ca.crt"
    params = config["postgresql"]["parameters"]
    assert params["ssl_ca_file"] == f"{tls}/client-ca.crt"
    auth = config["postgresql"]["authentication"]
    assert auth["replication"]["sslkey"] == f"{tls}/replication.key"
    assert auth["superuser"]["password"] == "first-password"
    assert "password" not in auth["replication"]


def test_a_rotated_superuser_password_rewrites_the_configuration(
    pod: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "patroni.yaml"
    config_file = ConfigFile(patroni_config(make_cluster()), pod, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "first-password" in target.read_text()
    assert config_file.refresh() is False
    (tmp_path / contract.SUPERUSER_PASSWORD_FILE.lstrip("/")).write_text("second-password\n")
    assert config_file.refresh() is True
    text = target.read_text()
    assert "second-password" in text and "first-password" not in text


def test_a_starting_instance_clears_the_previous_containers_socket_locks(tmp_path: Path) -> None:
    run = tmp_path / "run" / "postgresql"
    run.mkdir(parents=True)
    for name in (".s.PGSQL.5432", ".s.PGSQL.5432.lock", "other"):
        (run / name).write_text("42\n")
    assert sorted(clear_stale_socket_locks(run)) == [".s.PGSQL.5432", ".s.PGSQL.5432.lock"]
    assert [p.name for p in run.iterdir()] == ["other"]
