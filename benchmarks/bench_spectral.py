"""The spectral-toolkit benchmark: eigensolver, sketches and estimators in one go.

Run from the repository root::

    python benchmarks/bench_spectral.py [--quick] [--markdown PATH] [--only NAME ...]

It runs, one after the other in this process, the three parts that each compare
curvlab with its peers on the Hessians of ``digits_mlp``, ``digits_cnn`` and the
97k-parameter ``mnist16_cnn`` (see each script for the method and the targets):

- ``bench_eigsh.py``: top-10 eigenpairs, :func:`curvlab.linalg.eigsh` (one column
  and block mode) against SciPy's ARPACK on curvlinops' operator. Target: block
  mode at least 3x faster in wall time at equal accuracy.
- ``bench_sketch.py``: :func:`curvlab.linalg.sketched_eigh` against skerch's SEIGH
  at equal measurements. Target: at least 2x faster at equal error.
- ``bench_estimators.py``: trace and diagonal estimators against curvlinops,
  skerch and PyHessian at equal products. Target: equal error, faster.

``--markdown PATH`` writes the three tables into one file; ``--quick`` and
``--threads`` are handed to every part.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_eigsh  # noqa: E402
import bench_estimators  # noqa: E402
import bench_sketch  # noqa: E402

PARTS = {
    "eigsh": bench_eigsh.main,
    "sketch": bench_sketch.main,
    "estimators": bench_estimators.main,
}


def main(argv: list[str] | None = None) -> int:
    """Run the parts and gather their markdown.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The largest exit code of the parts.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", help="write all tables as markdown to PATH")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    code = 0
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or PARTS:
            path = Path(tmp) / f"{name}.md"
            part_args = ["--markdown", str(path)]
            if args.quick:
                part_args.append("--quick")
            if args.threads is not None and name != "sketch":
                part_args += ["--threads", str(args.threads)]
            print(f"\n=== bench_{name}.py {' '.join(part_args)}", flush=True)
            code = max(code, PARTS[name](part_args) or 0)
            if path.exists():
                sections.append(f"## bench_{name}.py\n\n{path.read_text()}")
    if args.markdown:
        Path(args.markdown).write_text("\n\n".join(sections))
    return code


if __name__ == "__main__":
    sys.exit(main())
