"""Allocates and touches MIB MiB (and so does each of CHILDREN child processes) once a line
arrives on stdin; then prints `ready PID CHILD_PID...` and holds it all until stdin closes.

Usage: python allocator.py MIB [CHILDREN]. For the memory accounting tests.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> None:
    mib = int(sys.argv[1])
    children = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sys.stdin.readline()
    kids = [
        subprocess.Popen(
            [sys.executable, __file__, str(mib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(children)
    ]
    for kid in kids:
        assert kid.stdin is not None and kid.stdout is not None
        kid.stdin.write("go\n")
        kid.stdin.flush()
        kid.stdout.readline()
    block = b"\x01" * (mib << 20)  # written, so every page is resident and private
    print("ready", os.getpid(), *(k.pid for k in kids), flush=True)
    sys.stdin.read()
    for kid in kids:
        assert kid.stdin is not None
        kid.stdin.close()
        kid.wait(10)
    del block


if __name__ == "__main__":
    main()
