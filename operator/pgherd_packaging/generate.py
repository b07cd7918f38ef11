"""`make generate`: regenerates every generated file from its sources, in dependency order.

manifests/ (CRDs, RBAC, Deployment, samples), then bundle/ and bundle.Dockerfile, then
catalog/ (which renders the fresh bundle with opm). Every setting comes from the command
line, which the Makefile fills from its variables (VERSION, IMG, CHANNELS, ...), so a test
can regenerate into a temporary root with the same settings and compare. Files in the
generated directories that the generator no longer produces are removed.

`--use-image-digests` (USE_IMAGE_DIGESTS=true) pins the operator and operand images of the
bundle by digest, read from their registry (.bundle.pin_digest); manifests/ keeps tags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgherd.api import v1alpha1
from pgherd_packaging import bundle, catalog, manifests, releases

PARTS = ("manifests", "bundle", "catalog")
CATALOG_FILE = "catalog/{package}/catalog.yaml"


def _sync(root: Path, directory: str, texts: dict[str, str]) -> list[Path]:
    """Write texts (paths relative to root) and delete stale files under root/directory."""
    written = manifests.write(root, texts)
    base = root / directory
    if base.is_dir():
        keep = set(written)
        for path in sorted(base.rglob("*")):
            if path.is_file() and path not in keep:
                path.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgherd_packaging.generate", description=__doc__
    )
    parser.add_argument("--root", type=Path, default=Path(), help="where to write (default .)")
    parser.add_argument("--history", type=Path, required=True, help="releases/history.yaml")
    parser.add_argument("--version", required=True, help="VERSION being built")
    parser.add_argument("--img", required=True, help="operator image (IMG)")
    parser.add_argument("--image-tag-base", required=True, help="IMAGE_TAG_BASE")
    parser.add_argument("--channels", required=True, help="CHANNELS, comma-separated")
    parser.add_argument("--default-channel", required=True, help="DEFAULT_CHANNEL")
    parser.add_argument("--scorecard-image", required=True, help="scorecard-test image")
    parser.add_argument(
        "--operand-image",
        default=v1alpha1.DEFAULT_IMAGE,
        help="operand image (RELATED_IMAGE_POSTGRES); default: the API's default image",
    )
    parser.add_argument(
        "--operand-image-for",
        action="append",
        default=[],
        metavar="MAJOR=IMAGE",
        help="operand image of another PostgreSQL major (RELATED_IMAGE_POSTGRES_<major>); "
        "default: the API's image of each supported major",
    )
    parser.add_argument(
        "--use-image-digests",
        action="store_true",
        help="pin the bundle's images by digest, resolved from their registry",
    )
    parser.add_argument("--opm", type=Path, required=True, help="the opm binary")
    parser.add_argument("parts", nargs="*", help=f"any of {', '.join(PARTS)}; default: all")
    args = parser.parse_args(argv)
    parts = args.parts or list(PARTS)
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    history = releases.load(args.history)
    root: Path = args.root

    if "manifests" in parts:
        for path in _sync(
            root, "manifests", {f"manifests/{k}": v for k, v in manifests.files(args.img).items()}
        ):
            print(path)
    if "bundle" in parts:
        image, operand_image = args.img, args.operand_image
        others = manifests.other_operand_images()
        for item in args.operand_image_for:
            major, sep, ref = item.partition("=")
            if not (sep and major.isdigit() and ref):
                parser.error(f"--operand-image-for {item!r}: expected MAJOR=IMAGE")
            others[int(major)] = ref
        if args.use_image_digests:
            image, operand_image = bundle.pin_digest(image), bundle.pin_digest(operand_image)
            others = {major: bundle.pin_digest(ref) for major, ref in others.items()}
        settings = bundle.BundleSettings(
            version=args.version,
            image=image,
            channels=tuple(c for c in args.channels.split(",") if c),
            default_channel=args.default_channel,
            scorecard_image=args.scorecard_image,
            operand_image=operand_image,
            other_operand_images=others,
        )
        for path in _sync(root, "bundle", bundle.files(settings, history)):
            print(path)
    if "catalog" in parts:
        # Released versions come from their frozen copies; the one being built from bundle/.
        dirs = {r.version: args.history.parent / r.version for r in history.releases}
        dirs[args.version] = root / "bundle"
        docs = catalog.documents(
            history,
            dirs,
            args.opm,
            default_channel=args.default_channel,
            image_tag_base=args.image_tag_base,
        )
        rel = CATALOG_FILE.format(package=history.package)
        for path in _sync(root, "catalog", {rel: catalog.file_text(docs)}):
            print(path)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (LookupError, ValueError, catalog.CatalogError, bundle.DigestError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
