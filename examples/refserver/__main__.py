"""Command line: `python -m examples.refserver --model NAME --size tiny|small --port N`.

The model is loaded before the port is bound, so the port only answers once the server is
ready; then one line `refserver: ready model=... size=... port=... load_s=... device=...` goes
to stdout. `--device cuda` asked for where CUDA is not usable exits with status 2 and one line on
stderr saying so.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import NoReturn

import torch
import uvicorn

from examples.refserver.device import DeviceUnavailable, format_size, parse_size, resolve_device
from examples.refserver.engine import Engine
from examples.refserver.kvcache import PrefixKVCache
from examples.refserver.model import SIZES, ensure_weights, load_model
from examples.refserver.residency import Residency
from examples.refserver.server import create_app

__all__ = ["default_state_dir", "main", "parse_args"]

_EPILOG = """\
sleep API (vLLM's routes): POST /sleep?level=1 moves the weights, the held memory and the KV
cache to host RAM (pinned on cuda) and frees their device memory; unlike vLLM the KV cache is kept
and comes back. POST /sleep?level=2 drops them (weights reload from the weights file, held memory
is refilled, the KV cache starts empty). POST /wake_up[?tags=weights|kv_cache] brings them back to
the same device; GET /is_sleeping answers {"is_sleeping": bool}. While asleep, inference answers
503 (code model_sleeping); /health stays 200. On cpu, device memory and host RAM are the same:
level 1 copies everything into a separate host buffer and back (nothing is freed), level 2 frees
the held memory, the KV cache and the weights' file pages.
"""


def default_state_dir() -> str:
    """$DORMANT_STATE_DIR/refserver if set, else ./.state/refserver."""
    base = os.environ.get("DORMANT_STATE_DIR")
    return os.path.join(base, "refserver") if base else os.path.join(".state", "refserver")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.refserver",
        description="OpenAI-compatible reference LLM with vLLM's sleep API.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model name served and expected")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-dir", default=default_state_dir(), help="where weights live")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N: where the model, its KV cache and its computation live"
        " (default cpu); exits with status 2 if CUDA is asked for and not usable",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the parameters' dtype (default float32); bfloat16 matmuls on a CPU with AMX use"
        " its tile instructions (oneDNN asks the kernel for AMX first)",
    )
    parser.add_argument(
        "--hold-device-memory",
        type=_size,
        default=0,
        metavar="SIZE",
        help="extra memory to allocate and keep on the device, e.g. 512MiB or 40GiB (default 0),"
        " so tests can fill a GPU; every page is written, so it is resident (on cpu it is host"
        " RAM that RSS/PSS show). Counted with the weights: sleep level 1 parks it in host RAM"
        " and wake brings it back; level 2 frees it and wake allocates and refills it",
    )
    parser.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=8192,
        help="tokens the prefix KV cache may hold (about 74 KB each for small); "
        "a hibernated server's snapshot carries them, so keep it modest",
    )
    return parser.parse_args(argv)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _fail(message: str) -> NoReturn:
    print(f"refserver: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


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
    try:
        device = resolve_device(args.device)
    except (ValueError, DeviceUnavailable) as exc:
        _fail(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.monotonic()
    model = load_model(args.state_dir, args.size, args.seed, device, getattr(torch, args.dtype))
    cache = PrefixKVCache(max_tokens=args.kv_cache_tokens)
    try:
        residency = Residency(
            model,
            cache,
            device,
            ensure_weights(args.state_dir, args.size, args.seed),
            held_bytes=args.hold_device_memory,
        )
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError on cuda
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(
            f"--hold-device-memory {format_size(args.hold_device_memory)}: {device} has no room"
            f" for it beside the model ({reason}); hold less"
        )
    load_s = time.monotonic() - began
    app = create_app(Engine(model, cache), args.model, residency)
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
        f"refserver: ready model={args.model} size={args.size} port={args.port}"
        f" load_s={load_s:.2f} device={device}"
    )
    if args.hold_device_memory:
        ready += f" held={format_size(args.hold_device_memory)}"
    _Server(config, ready).run()


if __name__ == "__main__":
    main()
