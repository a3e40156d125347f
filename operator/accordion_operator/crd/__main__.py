"""`python -m accordion_operator.crd [--check] [--output-dir DIR]`: write both CRDs to crds/.

The pydantic models under `accordion_operator/api/` are the one source of truth; `--check` exits
1 when a committed CRD differs from what they produce (`make lint` and a unit test run it, so the
models and the YAML cannot drift). `make crds` regenerates them and the chart's copies.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accordion_operator.api import experiment, trainingrun
from accordion_operator.api.common import GROUP
from accordion_operator.crd import experiment as experiment_crd
from accordion_operator.crd import trainingrun as trainingrun_crd
from accordion_operator.crd.schema import render_crd

#: file name -> builder of the CRD document
CRDS: dict[str, Callable[[], dict[str, Any]]] = {
    f"{trainingrun.PLURAL}.{GROUP}.yaml": trainingrun_crd.build_crd,
    f"{experiment.PLURAL}.{GROUP}.yaml": experiment_crd.build_crd,
}
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "crds"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accordion_operator.crd")
    parser.add_argument("--check", action="store_true", help="fail if a CRD file is stale")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    stale = 0
    for name, build in CRDS.items():
        path: Path = args.output_dir / name
        text = render_crd(build())
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            continue
        current = path.read_text() if path.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(path), "generated", lineterm=""
            )
            print("\n".join(list(diff)[:80]), file=sys.stderr)
            print(f"{path} is stale: run make crds", file=sys.stderr)
            stale += 1
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
