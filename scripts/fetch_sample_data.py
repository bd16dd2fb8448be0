#!/usr/bin/env python3
"""Fetch real order flow for a fresh machine: the Bitstamp BTC/USD L3 capture
(30 minutes, 314,057 order events, 284 trades) that the ``ob-analytics`` 0.1.0
package ships on PyPI (its sample data, GPL-2.0-or-later).

    python scripts/fetch_sample_data.py [--dest data/samples/bitstamp]

Uses ``pip download`` (the package index is reachable where pip works), takes
the wheel's ``_sample_data`` files out, and checks their SHA-256. Nothing of
the package is installed. Prints the path of ``orders.csv.gz``.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "ob-analytics==0.1.0"
FILES = {
    "orders.csv.gz": "880501e94fb43942b7f98cbc37bab421d72703d85898aae8de5da117bf62cdfc",
    "trades.csv": "9fd0dd86023b71eed49026b9b8e8a45d06d2578ced69393ad696f37233e9c795",
    "meta.json": "d3cc14e040022e7ccac0ffbc28b319fa7c6158a700f112e5e4ad4097e9fb17f6",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="data/samples/bitstamp", help="where to put the files")
    args = parser.parse_args()
    dest = Path(args.dest)
    if all((dest / name).exists() and hashlib.sha256((dest / name).read_bytes()).hexdigest() == sha
           for name, sha in FILES.items()):
        print(dest / "orders.csv.gz")
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, PACKAGE], check=True)
        wheel = next(Path(tmp).glob("ob_analytics-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name, sha in FILES.items():
                data = z.read(f"ob_analytics/_sample_data/{name}")
                digest = hashlib.sha256(data).hexdigest()
                if digest != sha:
                    print(f"error: {name} from {wheel.name} has SHA-256 {digest}, expected {sha}", file=sys.stderr)
                    return 1
                (dest / name).write_bytes(data)
    print(dest / "orders.csv.gz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
