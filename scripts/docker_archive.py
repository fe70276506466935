"""Wrap a root filesystem tarball into a one-layer docker-archive (what `docker save` writes and
`ctr images import` / `docker load` read), with the standard library only.

    python3 scripts/docker_archive.py ROOTFS.tar TAG OUT.tar [--env K=V ...] [--cmd ARG ...]
        [--workdir DIR]

The layer is ROOTFS.tar itself (uncompressed); its sha256 is the image's only diff_id. The
config carries no timestamps, so the same rootfs gives the same image ID.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    out.addfile(info, io.BytesIO(data))


def write(
    rootfs: Path,
    tag: str,
    dest: Path,
    env: list[str],
    cmd: list[str],
    workdir: str = "/",
) -> str:
    """Write the archive to `dest` (atomically); return the image ID (the config's sha256)."""
    layer = _sha256(rootfs)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, "Cmd": cmd or None, "WorkingDir": workdir},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]},
        "history": [{"created_by": "scripts/docker_archive.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [
        {"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": [f"{layer}/layer.tar"]}
    ]
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        _add_bytes(out, f"{config_id}.json", config_bytes)
        info = out.gettarinfo(str(rootfs), arcname=f"{layer}/layer.tar")
        info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = 0o644, 0, 0, "", "", 0
        with rootfs.open("rb") as f:
            out.addfile(info, f)
        _add_bytes(out, "manifest.json", json.dumps(manifest).encode())
        repo, _, version = tag.rpartition(":")
        _add_bytes(out, "repositories", json.dumps({repo: {version: layer}}).encode())
    os.replace(tmp, dest)
    return config_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("tag")
    parser.add_argument("out", type=Path)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--cmd", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    print(write(args.rootfs, args.tag, args.out, args.env, args.cmd, args.workdir))


if __name__ == "__main__":
    main()
