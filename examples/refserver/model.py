"""GPT-2-shaped model with deterministic random weights, memory-mapped from safetensors.

Weights are generated once per (size, seed) into `{state_dir}/models/{size}-seed{seed}.safetensors`
and then always loaded by memory-mapping that file: every parameter is a view of a private
copy-on-write file mapping. Dormant checkpoints this process with CRIU, and file-backed pages
that were never written are not copied into the snapshot, so snapshots stay small.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from examples.refserver.tokenizer import EOS_ID, VOCAB_SIZE

__all__ = [
    "SIZES",
    "ensure_weights",
    "load_model",
    "mmap_safetensors",
    "model_config",
    "weights_path",
]

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 512, "vocab_size": VOCAB_SIZE},
    # The GPT-2 124M shape; only the first VOCAB_SIZE rows of the embedding are ever used.
    "small": {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
}

_DTYPES: dict[str, np.dtype] = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}


def model_config(size: str) -> GPT2Config:
    """Return the GPT2Config of a size preset (`tiny` or `small`)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    return GPT2Config(**SIZES[size], bos_token_id=EOS_ID, eos_token_id=EOS_ID)


def weights_path(state_dir: str | os.PathLike[str], size: str, seed: int) -> Path:
    """Return where the weights of (size, seed) live under `state_dir`."""
    return Path(state_dir) / "models" / f"{size}-seed{seed}.safetensors"


def ensure_weights(state_dir: str | os.PathLike[str], size: str, seed: int) -> Path:
    """Generate the weights file of (size, seed) unless it exists; return its path.

    The file is written to a temporary name in the same directory, fsynced and renamed into
    place, so a concurrent reader sees either no file or a complete one.
    """
    path = weights_path(state_dir, size, seed)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(model_config(size))
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # the tied lm_head weight is the embedding: save it once
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.contiguous()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; other users may serve the same weights
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def mmap_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Return the tensors of a safetensors file as views of one copy-on-write memory map."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="c")
    base = 8 + header_len
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = data[base + start : base + end].view(_DTYPES[info["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(info["shape"]))
    return tensors


def load_model(
    state_dir: str | os.PathLike[str],
    size: str,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> GPT2LMHeadModel:
    """Load (generating on first use) the model of (size, seed) onto `device` as `dtype`,
    warmed up.

    On CPU in float32 the parameters are views of the memory-mapped weights file; on another
    device, or in another dtype, they are copies of it.
    """
    path = ensure_weights(state_dir, size, seed)
    with torch.device("meta"):
        model = GPT2LMHeadModel(model_config(size))
    # assign=True makes the parameters the mmap views themselves instead of copies.
    result = model.load_state_dict(mmap_safetensors(path), strict=False, assign=True)
    model.tie_weights()
    unloaded = [name for name, param in model.named_parameters() if param.is_meta]
    if result.unexpected_keys or unloaded:
        raise ValueError(f"{path}: unexpected {result.unexpected_keys}, missing {unloaded}")
    model.eval()
    device = torch.device(device)
    if device.type != "cpu":
        model.to(device)  # type: ignore[arg-type]  # transformers' stubs wrap `to` oddly
    if dtype != torch.float32:
        model.to(dtype)  # type: ignore[arg-type]
    with torch.inference_mode():
        model(torch.full((1, 8), ord(" "), device=device))
    return model
