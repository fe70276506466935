"""Command line: `python -m examples.refserver --model NAME --size tiny|small --port N`.

The model is loaded before the port is bound, so the port only answers once the server is
ready; then one line `refserver: ready model=... size=... port=... load_s=...` goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import uvicorn

from examples.refserver.engine import Engine
from examples.refserver.kvcache import PrefixKVCache
from examples.refserver.model import SIZES, load_model
from examples.refserver.server import create_app


def default_state_dir() -> str:
    """$DORMANT_STATE_DIR/refserver if set, else ./.state/refserver."""
    base = os.environ.get("DORMANT_STATE_DIR")
    return os.path.join(base, "refserver") if base else os.path.join(".state", "refserver")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.refserver", description="OpenAI-compatible CPU reference LLM."
    )
    parser.add_argument("--model", required=True, help="model name served and expected")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-dir", default=default_state_dir(), help="where weights live")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=8192,
        help="tokens the prefix KV cache may hold (about 74 KB each for small); "
        "a hibernated server's snapshot carries them, so keep it modest",
    )
    return parser.parse_args(argv)


class _Server(uvicorn.Server):
    """Prints the ready line once the listening socket is up."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.ready_line, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Load the model, then serve it until interrupted."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.monotonic()
    model = load_model(args.state_dir, args.size, args.seed)
    load_s = time.monotonic() - began
    app = create_app(Engine(model, PrefixKVCache(max_tokens=args.kv_cache_tokens)), args.model)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="auto",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    ready = (
        f"refserver: ready model={args.model} size={args.size} port={args.port} load_s={load_s:.2f}"
    )
    _Server(config, ready).run()


if __name__ == "__main__":
    main()
