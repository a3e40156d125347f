"""Record what `make images` built as data: benchmarks/results/images.json.

For each image in .accordion/images.json (base, operator, trainer, trainer-cuda when built): its
reference, compressed and unpacked size, and its layers (the Dockerfile step that made each, its
compressed and unpacked bytes), read from the local registry's storage. Build and e2e figures
given on the command line are merged into the file's `figures`, beside what it already holds.

    python3 images/record.py                             # sizes and layers of the built images
    python3 images/record.py --figure cold_build_s=1830  # plus (or replacing) one figure
    python3 images/record.py --timings .accordion/test-images-timings.json

Stdlib only, like images/build-images.sh's other helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "images.json"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accordion"
    return Path(os.environ.get("ACCORDION_CACHE", default))


def blob(root: Path, digest: str) -> Path:
    hexa = digest.split(":", 1)[1]
    return root / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def unpacked_bytes(path: Path) -> int:
    """Bytes of a gzip layer once decompressed (streamed: the CUDA layer is gigabytes)."""
    d = zlib.decompressobj(wbits=31)
    total = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            total += len(d.decompress(chunk))
    return total + len(d.flush())


def describe(root: Path, image: dict[str, Any]) -> dict[str, Any]:
    manifest = json.loads(blob(root, image["digest"]).read_text())
    config = json.loads(blob(root, manifest["config"]["digest"]).read_text())
    steps = [h for h in config.get("history", []) if not h.get("empty_layer")]
    if len(steps) != len(manifest["layers"]):  # no history to name the layers by
        steps = [{} for _ in manifest["layers"]]
    layers = [
        {
            "createdBy": " ".join(str(step.get("created_by", "?")).split())[:300],
            "compressedBytes": layer["size"],
            "unpackedBytes": unpacked_bytes(blob(root, layer["digest"])),
        }
        for step, layer in zip(steps, manifest["layers"], strict=True)
    ]
    return {
        "reference": f"{image['repository']}:{image['tag']}@{image['digest']}",
        "compressedBytes": sum(x["compressedBytes"] for x in layers),
        "unpackedBytes": sum(x["unpackedBytes"] for x in layers),
        "layers": layers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figure", action="append", default=[], metavar="NAME=NUMBER")
    parser.add_argument("--timings", type=Path, help="a JSON object of seconds (the image e2e's)")
    parser.add_argument("--note", action="append", default=[], metavar="NAME=TEXT")
    args = parser.parse_args()
    built = json.loads((REPO / ".accordion" / "images.json").read_text())
    root = cache_dir() / "images" / "registry"
    out: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    images = out.setdefault("images", {})
    for name, image in sorted(built["images"].items()):
        images[name] = describe(root, image)
        mib = images[name]["unpackedBytes"] / 2**20
        print(f"{name:<14} {mib:8.0f} MiB unpacked, {len(images[name]['layers'])} layers")
    figures = out.setdefault("figures", {})
    for item in args.figure:
        key, _, value = item.partition("=")
        figures[key] = float(value)
    if args.timings:
        figures["test_images_seconds"] = json.loads(args.timings.read_text())
    notes = out.setdefault("notes", {})
    for item in args.note:
        key, _, value = item.partition("=")
        notes[key] = value
    out["storageDriver"] = built.get("storageDriver")
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
