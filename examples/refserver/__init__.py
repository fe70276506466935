"""Reference LLM server: a small OpenAI-compatible CPU server for Dormant's config, demos, tests.

Run it with `python -m examples.refserver --model NAME --size tiny|small --port N`.
"""

from examples.refserver.engine import Engine, Generation
from examples.refserver.kvcache import CacheHit, PrefixKVCache
from examples.refserver.model import SIZES, ensure_weights, load_model, mmap_safetensors
from examples.refserver.server import chat_prompt, create_app
from examples.refserver.tokenizer import EOS_ID, VOCAB_SIZE, StreamDecoder, decode, encode

__all__ = [
    "EOS_ID",
    "SIZES",
    "VOCAB_SIZE",
    "CacheHit",
    "Engine",
    "Generation",
    "PrefixKVCache",
    "StreamDecoder",
    "chat_prompt",
    "create_app",
    "decode",
    "encode",
    "ensure_weights",
    "load_model",
    "mmap_safetensors",
]
