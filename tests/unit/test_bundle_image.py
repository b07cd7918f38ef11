"""The bundle image built from bundle.Dockerfile carries exactly the bundle directory.

buildah builds it (no container engine here), it is pushed to a local registry on
127.0.0.1, and `opm render` reads it back: the rendered bundle must equal the rendering of
bundle/ itself, the image reference aside.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pgherd_dev.errors import DevError
from pgherd_dev.images import Buildah, LocalRegistry
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.tools, pytest.mark.slow]


def opm_render(opm: Path, ref: str, home: Path, *extra: str) -> dict[str, Any]:
    # opm keeps its image cache under $HOME; a private one keeps the run hermetic.
    done = subprocess.run(
        [str(opm), "render", ref, "--output", "json", *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
        cwd=home,
    )
    assert done.returncode == 0, done.stderr
    rendered: dict[str, Any] = json.loads(done.stdout)
    return rendered


def test_bundle_image_round_trips_through_a_registry(tmp_path: Path) -> None:
    opm = require_tool("opm")
    if os.geteuid() != 0:
        pytest.fail("buildah with chroot isolation needs root here", pytrace=False)
    try:
        buildah = Buildah(tmp_path / "buildah")
        with LocalRegistry(tmp_path / "registry") as registry:
            tag = f"{registry.host}/pgherd-operator-bundle:v-test"
            buildah.build(REPO, "bundle.Dockerfile", tag)
            buildah.push(tag)
            from_image = opm_render(opm, tag, tmp_path, "--use-http")
    except DevError as e:
        pytest.fail(str(e), pytrace=False)
    from_directory = opm_render(opm, str(REPO / "bundle"), tmp_path)
    assert from_image.pop("image") == tag
    from_directory.pop("image")
    # opm lists the bundle image itself among the related images of an image it read.
    assert {"name": "", "image": tag} in from_image["relatedImages"]
    from_image["relatedImages"].remove({"name": "", "image": tag})
    assert from_image == from_directory
