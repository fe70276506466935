"""Reference LLM server: a small OpenAI-compatible server for Dormant's config, demos, tests.

Run it with `python -m examples.refserver --model NAME --size tiny|small --port N`, on CPU (the
default) or `--device cuda`. It implements vLLM's sleep API (`POST /sleep`, `POST /wake_up`,
`GET /is_sleeping`); see `residency`.
"""

from examples.refserver.device import DeviceUnavailable, parse_size, resolve_device
from examples.refserver.engine import Engine, Generation
from examples.refserver.kvcache import CacheHit, PrefixKVCache
from examples.refserver.model import SIZES, ensure_weights, load_model, mmap_safetensors
from examples.refserver.residency import Residency, WakeFailed
from examples.refserver.server import chat_prompt, create_app
from examples.refserver.tokenizer import EOS_ID, VOCAB_SIZE, StreamDecoder, decode, encode

__all__ = [
    "EOS_ID",
    "SIZES",
    "VOCAB_SIZE",
    "CacheHit",
    "DeviceUnavailable",
    "Engine",
    "Generation",
    "PrefixKVCache",
    "Residency",
    "StreamDecoder",
    "WakeFailed",
    "chat_prompt",
    "create_app",
    "decode",
    "encode",
    "ensure_weights",
    "load_model",
    "mmap_safetensors",
    "parse_size",
    "resolve_device",
]
