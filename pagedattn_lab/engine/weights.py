"""Model weights: a seeded random init, and safetensors checkpoints with Hugging Face names.

Weights are a dict from Hugging Face Llama parameter names to arrays, e.g.
`model.layers.0.self_attn.q_proj.weight` of shape [num_heads * head_dim, hidden_size] (a
Linear stores [out, in]). So a `save_pretrained` directory of a Llama loads as is, and what
`save_checkpoint` writes loads in transformers.

safetensors is a simple format, read and written here without the `safetensors` package:
8 bytes (little-endian u64) giving the header's length, a JSON header mapping each tensor's
name to {dtype, shape, data_offsets [begin, end)} relative to the end of the header, then the
raw little-endian bytes. bfloat16 (what most Llama checkpoints hold) has no NumPy dtype; it
is the top half of a float32, so it widens exactly by a 16-bit shift.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from ..validate import check_int
from .config import ModelConfig

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 * 2**20


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of LlamaForCausalLM by its Hugging Face name, with its shape."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes |= {p + "input_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (config.q_size, h),
                   p + "self_attn.k_proj.weight": (config.kv_size, h),
                   p + "self_attn.v_proj.weight": (config.kv_size, h),
                   p + "self_attn.o_proj.weight": (h, config.q_size),
                   p + "post_attention_layernorm.weight": (h,),
                   p + "mlp.gate_proj.weight": (i, h),
                   p + "mlp.up_proj.weight": (i, h),
                   p + "mlp.down_proj.weight": (h, i)}
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def random_weights(config: ModelConfig, seed: int = 0, dtype=np.float32,
                   xp=np) -> dict[str, np.ndarray]:
    """Seeded random weights: each matrix N(0, 1/fan_in), so activations and logits stay of
    order one (sharp next-token choices, unlike a 0.02 init whose logits nearly tie);
    norm weights 1 + N(0, 0.1^2), so a forgotten norm weight changes the result.
    xp=cupy draws them on the GPU (other numbers than NumPy's for the same seed)."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
    if seed is not None:   # else NumPy's SeedSequence refuses it, naming no argument
        check_int(seed, "seed", minimum=0)
    try:
        floating = np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:   # NumPy's "data type not understood" names no argument
        floating = False
    if not floating:   # int8 would truncate every weight to -1, 0 or 1
        raise TypeError(f"dtype: expected a floating-point dtype, got {dtype!r}")
    rng = xp.random.default_rng(seed)
    weights = {}
    for name, shape in parameter_shapes(config).items():
        w = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) == 1:
            w = 1.0 + 0.1 * w
        elif name != "model.embed_tokens.weight":
            w /= np.float32(math.sqrt(shape[1]))
        weights[name] = w.astype(dtype, copy=False)
    return weights


def check_weights(config: ModelConfig, weights: dict) -> None:
    """Every parameter present with its shape; raises naming the first missing or wrong one."""
    if not isinstance(weights, dict):
        raise TypeError(f"weights: expected a dict of arrays by parameter name, got "
                        f"{type(weights).__name__}")
    for name, shape in parameter_shapes(config).items():
        if name not in weights:
            raise ValueError(f"weights: missing {name!r} (expected shape {shape})")
        w = weights[name]
        if not hasattr(w, "shape") or not hasattr(w, "dtype"):
            raise TypeError(f"weights[{name!r}]: expected a NumPy or CuPy array, got "
                            f"{type(w).__name__}")
        if np.dtype(w.dtype).kind != "f":   # integer codes would be cast and run as numbers
            raise TypeError(f"weights[{name!r}]: expected a floating-point array, got dtype "
                            f"{w.dtype}")
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weights[{name!r}]: expected shape {shape}, got "
                             f"{tuple(weights[name].shape)}")


# -- safetensors -------------------------------------------------------------------------

def read_safetensors(path, names=None) -> dict[str, np.ndarray]:
    """The tensors of one .safetensors file (only `names` when given), as NumPy arrays.
    bfloat16 tensors come back as float32 (exactly)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte "
                             "header size)")
        (header_len,) = struct.unpack("<Q", raw)
        size = path.stat().st_size
        if header_len > min(MAX_HEADER, size - 8):
            raise ValueError(f"{path}: header length {header_len} does not fit the file "
                             f"({size} bytes): not a safetensors file, or truncated")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the header is not valid JSON ({e}): not a safetensors "
                             "file, or corrupted") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the header is a JSON {type(header).__name__}, expected "
                             "an object mapping tensor names to their dtype, shape and offsets")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + header_len else b""
    start = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        out[name] = _tensor(path, name, info, data, start, size)
    return out


def _tensor(path, name: str, info: dict, data, start: int, size: int) -> np.ndarray:
    fields = ("dtype", "shape", "data_offsets")
    if not isinstance(info, dict) or any(f not in info for f in fields):
        raise ValueError(f"{path}: tensor {name!r} has header entry {info!r}, expected the "
                         f"keys {', '.join(fields)}")
    code, shape = info["dtype"], tuple(info["shape"])
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"{path}: tensor {name!r} has shape {list(shape)}, expected sizes "
                         "that are ints >= 0")
    if code not in _DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has dtype {code}, which is not supported "
                         f"({', '.join(_DTYPES)})")
    dtype = np.dtype(_DTYPES[code])
    begin, end = info["data_offsets"]
    if not 0 <= begin <= end <= size - start:
        raise ValueError(f"{path}: tensor {name!r} has data offsets {begin}..{end} outside the "
                         f"file's {size - start} data bytes (truncated file?)")
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path}: tensor {name!r} of shape {shape} and dtype {code} needs "
                         f"{math.prod(shape) * dtype.itemsize} bytes, its offsets give "
                         f"{end - begin}")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=np.float32 if code == "BF16" else dtype)
    arr = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=math.prod(shape),
                        offset=start + begin).reshape(shape)
    if code == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(dtype.newbyteorder("="))


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write NumPy arrays (any array with .get() is copied to the host first)."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr.get() if hasattr(arr, "get") else arr)
        if arr.dtype not in _CODES:
            raise TypeError(f"tensors[{name!r}]: dtype {arr.dtype} cannot be stored (safetensors "
                            f"here takes {', '.join(str(d) for d in _CODES)})")
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _CODES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)   # the data starts 8-byte aligned, as the format advises
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


# -- checkpoints ----------------------------------------------------------------------------

def _directory(directory) -> Path:
    """A checkpoint directory as a Path; anything but a str or os.PathLike is refused by name
    (Path(5) fails with "expected str, bytes or os.PathLike object", naming nothing)."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got "
                        f"{type(directory).__name__}")
    return Path(directory)


def _read_json_object(path: Path) -> dict:
    """A JSON file holding one object; anything else is refused naming the file (json's own
    error names only a line and column)."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got a JSON {type(value).__name__}")
    return value


def load_checkpoint(directory) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, weights) of a Hugging Face Llama directory: config.json plus model.safetensors
    or a sharded model.safetensors.index.json; the end tokens of generation_config.json where
    there is one (transformers' generate stops at those). Nothing is downloaded."""
    directory = _directory(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"directory: no config.json in {directory}")
    hf = _read_json_object(config_path)
    generation = directory / "generation_config.json"
    eos = _read_json_object(generation).get("eos_token_id") if generation.is_file() else None
    if eos is None:
        config = ModelConfig.from_hf(hf)
    else:   # its end tokens are the ones generate() stops at (Llama 3 instruct: a list)
        try:
            config = ModelConfig.from_hf(hf | {"eos_token_id": eos})
        except (TypeError, ValueError) as e:
            if not str(e).startswith("eos_token_id"):
                raise
            raise type(e)(f"{generation}: {e}") from None
    wanted = parameter_shapes(config)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a 'weight_map' object naming each tensor's "
                             f"file, got {type(weight_map).__name__}")
        files = sorted({weight_map[n] for n in wanted if n in weight_map})
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"directory: no model.safetensors or "
                                f"model.safetensors.index.json in {directory}")
    weights = {}
    for file in files:
        weights |= read_safetensors(directory / file, names=wanted)
    check_weights(config, weights)
    return config, weights


def save_checkpoint(directory, config: ModelConfig, weights: dict) -> None:
    """Write config.json and model.safetensors, loadable by `load_checkpoint` and by
    transformers' `LlamaForCausalLM.from_pretrained`."""
    check_weights(config, weights)
    directory = _directory(directory)
    text = json.dumps(config.to_hf(), indent=2)   # (one that fails leaves no directory behind)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(text)
    names = parameter_shapes(config)
    write_safetensors(directory / "model.safetensors", {n: weights[n] for n in names},
                      metadata={"format": "pt"})
