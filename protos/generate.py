"""Regenerate the Python stubs for the wire contract: ``make protos``.

The .proto files live at ``protos/conveyor/v1/`` and protoc runs with ``-I protos``,
so the generated modules import each other as ``conveyor.v1.*``: exactly the
package they are written into. Nothing is rewritten after generation.

``--out DIR`` writes the tree somewhere else; the drift test uses it to compare a
fresh generation with the committed stubs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PACKAGE = Path("conveyor") / "v1"
INIT_TEXT = (
    '"""Generated gRPC/protobuf stubs for the conveyor.v1 wire contract (see protos/). Do not edit."""\n'
)


def generate(out_root: Path) -> list[Path]:
    """Write the stubs for every .proto under ``protos/conveyor/v1`` into ``out_root/conveyor/v1``."""
    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE}")
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(p) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        target = out_root / PACKAGE
        if target.exists():
            for stale in target.glob("*_pb2*.py*"):
                stale.unlink()
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for produced in sorted((Path(scratch) / PACKAGE).iterdir()):
            shutil.copyfile(produced, target / produced.name)
            written.append(target / produced.name)
        (target / "__init__.py").write_text(INIT_TEXT)
        written.append(target / "__init__.py")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="root to write conveyor/v1 into (default: repo)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
