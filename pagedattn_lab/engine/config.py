"""The two configurations of the serving engine: the model's shape and the engine's knobs.

`ModelConfig` uses Hugging Face's Llama field names, so a checkpoint's `config.json` maps onto
it field by field (`ModelConfig.from_hf`) and back (`to_hf`). `EngineConfig` holds what a
serving system tunes: the KV pool, the token budget of one step, prefix caching, preemption
and allocation policies.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..quant import check_scheme, kv_format
from ..validate import check_bool, check_int
from ..validate_kinds import is_finite_number, is_number, is_one_of, python_number

ROPE_TYPES = ("default", "linear", "llama3")
HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads")


def _is_positive(value) -> bool:
    return is_finite_number(value) and value > 0


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-architecture decoder (Llama 2/3, TinyLlama, SmolLM, ...).

    head_dim defaults to hidden_size // num_attention_heads, as in transformers.
    eos_token_id: the end-of-sequence token, or several as in transformers (Llama 3.1 instruct
    lists [128001, 128008, 128009]): a list or tuple is stored as a tuple (one id as an int),
    and generation stops at any of them; `eos_token_ids` is always the tuple.
    """
    vocab_size: int = 128
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            # stored as Python ints: a NumPy int64 fails in to_hf's JSON (save_checkpoint)
            object.__setattr__(self, name, check_int(getattr(self, name), name, minimum=1))
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"head_dim: not given and hidden_size {self.hidden_size} is not "
                                 f"a multiple of num_attention_heads {self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        object.__setattr__(self, "head_dim", check_int(self.head_dim, "head_dim", minimum=2))
        if self.head_dim % 2:
            raise ValueError(f"head_dim: RoPE rotates pairs of dimensions, so it must be even; "
                             f"got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads: {self.num_key_value_heads} does not divide "
                             f"num_attention_heads {self.num_attention_heads} (GQA needs whole "
                             "groups)")
        object.__setattr__(self, "tie_word_embeddings",
                           check_bool(self.tie_word_embeddings, "tie_word_embeddings"))
        if self.bos_token_id is not None:
            object.__setattr__(self, "bos_token_id", check_int(
                self.bos_token_id, "bos_token_id", minimum=0, maximum=self.vocab_size - 1))
        object.__setattr__(self, "eos_token_id", _check_eos(self.eos_token_id, self.vocab_size))
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not is_number(value):
                raise TypeError(f"{name}: expected a positive number, got {value!r} "
                                f"({type(value).__name__})")
            if not _is_positive(value):
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
            object.__setattr__(self, name, python_number(value))   # to_hf writes JSON
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise TypeError(f"rope_scaling: expected a dict or None, got {self.rope_scaling!r}")
        rope_type = self.rope_type
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_scaling: rope type {rope_type!r} is not supported; "
                             f"supported: {ROPE_TYPES}")
        if rope_type != "default" and "factor" not in self.rope_scaling:
            raise ValueError(f"rope_scaling: rope type {rope_type!r} needs a 'factor', got "
                             f"{self.rope_scaling!r}")
        if rope_type != "default":   # a factor of 0 or NaN made every logit NaN, silently
            _check_rope_numbers(self.rope_scaling, rope_type)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every end-of-sequence token (none: ()); a request stops at the first it samples."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @property
    def rope_type(self) -> str:
        scaling = self.rope_scaling or {}
        return scaling.get("rope_type", scaling.get("type", "default"))

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def num_parameters(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        layer = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_hidden_layers * layer + h + head

    def kv_bytes_per_token(self, itemsize: int) -> int:
        """K and V of one token over every layer."""
        return 2 * self.num_hidden_layers * self.kv_size * itemsize

    @classmethod
    def from_hf(cls, hf: dict) -> ModelConfig:
        """From a transformers `config.json` dict (model_type "llama"; unknown keys ignored)."""
        if not isinstance(hf, dict):
            raise TypeError(f"config: expected a dict (config.json), got {type(hf).__name__}")
        model_type = hf.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"config: expected model_type 'llama', got {model_type!r}")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ValueError("config: attention_bias / mlp_bias checkpoints are not supported")
        missing = [k for k in HF_REQUIRED if k not in hf]
        if missing:   # the tiny defaults would silently stand in for the checkpoint's sizes
            raise ValueError(f"config: missing {', '.join(map(repr, missing))} (a Llama "
                             f"config.json has them all)")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names}
        if kwargs.get("num_key_value_heads") is None:
            kwargs["num_key_value_heads"] = hf["num_attention_heads"]
        if "rope_theta" not in hf and isinstance(hf.get("rope_parameters"), dict):
            params = hf["rope_parameters"]   # transformers 5 folds theta into rope_parameters
            kwargs["rope_theta"] = params.get("rope_theta", cls.rope_theta)
            if params.get("rope_type", "default") != "default":
                kwargs["rope_scaling"] = params
        if isinstance(kwargs.get("bos_token_id"), list) and kwargs["bos_token_id"]:
            kwargs["bos_token_id"] = kwargs["bos_token_id"][0]   # a prompt starts with one
        return cls(**kwargs)   # a list of end tokens (Llama 3) is kept whole: see _check_eos

    def to_hf(self) -> dict:
        """A transformers `config.json` dict for LlamaForCausalLM."""
        out = dataclasses.asdict(self)
        if isinstance(self.eos_token_id, tuple):   # as transformers writes several: a list
            out["eos_token_id"] = list(self.eos_token_id)
        out.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                   attention_bias=False, mlp_bias=False)
        return out


def tiny_config(**overrides) -> ModelConfig:
    """The tests' model: 2 layers, hidden 64, 4 query / 2 KV heads of 16, vocabulary 128."""
    return ModelConfig(**overrides)


def llama_1b_config(**overrides) -> ModelConfig:
    """A ~1.1B-parameter Llama (the shape of Llama 3.2 1B with a 32k vocabulary)."""
    base = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                rope_theta=500000.0, max_position_embeddings=4096)
    return ModelConfig(**(base | overrides))


def _check_eos(eos, vocab_size: int) -> int | tuple[int, ...] | None:
    """eos_token_id as stored: None, an int, or a tuple of several (a list or tuple of one is
    that int, an empty one None). An id past the vocabulary could never be sampled, so the
    request would never stop: refused, naming its index in a list (eos_token_id[2])."""
    if eos is None:
        return None
    if not isinstance(eos, (list, tuple)):
        return check_int(eos, "eos_token_id", minimum=0, maximum=vocab_size - 1)
    ids = tuple(check_int(v, f"eos_token_id[{i}]", minimum=0, maximum=vocab_size - 1)
                for i, v in enumerate(eos))
    return ids if len(ids) > 1 else (ids[0] if ids else None)


def _check_rope_numbers(scaling: dict, rope_type: str) -> None:
    """rope_scaling's numbers (model.rope_inv_freq): a positive factor; for llama3, positive
    frequency factors with low < high (it divides by high - low) and an int context."""
    names = ["factor"] + (["low_freq_factor", "high_freq_factor"] if rope_type == "llama3" else [])
    for key in names:
        value = scaling.get(key, 1.0 if key == "low_freq_factor" else 4.0)
        if not _is_positive(value):
            raise ValueError(f"rope_scaling[{key!r}]: expected a finite number > 0, got "
                             f"{value!r}")
    if rope_type == "llama3":
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        if low >= high:
            raise ValueError(f"rope_scaling: expected low_freq_factor < high_freq_factor, got "
                             f"{low} and {high}")
        check_int(scaling.get("original_max_position_embeddings", 8192),
                  "rope_scaling['original_max_position_embeddings']", minimum=1)


PREEMPTION_MODES = ("recompute", "swap")
ALLOCATIONS = ("on_demand", "predictive")


@dataclass(frozen=True)
class EngineConfig:
    """What the engine tunes. Lengths are in tokens, memory in pages of `page_size` tokens.

    max_num_batched_tokens: the token budget of one step (decode tokens count 1 each,
        prefill chunks their length).
    max_prefill_chunk: at most this many prompt tokens of one request per step (None: the
        budget); a long prompt is prefilled in chunks, mixed with other requests' decodes.
    watermark: a new request is admitted only if this fraction of the pool stays free after
        its first step's pages are taken (its cached prefix's pages that sit in the free
        queue, those of its first prompt chunk, and a predictive reservation): room for the
        running requests to grow. Later chunks of a long prompt take pages as they run, as
        in vLLM v1, so they may preempt.
    preemption_mode: when the pool runs dry, "recompute" drops a victim's pages (it later
        prefills prompt + output again) and "swap" copies them to `num_host_pages` pages of
        host memory (recompute when those are full).
    allocation: "on_demand" takes a page when the last one is full; "predictive" reserves
        pages for `expected_output_len` more tokens at admission (None: learn it from the
        requests that finished; `initial_output_guess` until one has).
    kv_dtype: None (pages of the model's dtype), "int8" or "fp8_e4m3" (one-byte codes with
        scales, quant.py); kv_scale_scheme "per_token" (computed as each token is written) or
        "static" (per layer and KV head, given to LLMEngine as `kv_scales`).
    """
    page_size: int = 16
    num_pages: int = 256
    max_num_batched_tokens: int = 256
    max_num_seqs: int = 64
    max_prefill_chunk: int | None = None
    enable_prefix_caching: bool = True
    watermark: float = 0.01
    preemption_mode: str = "recompute"
    num_host_pages: int = 0
    allocation: str = "on_demand"
    expected_output_len: int | None = None
    initial_output_guess: int = 64
    seed: int = 0
    kv_dtype: str | None = None
    kv_scale_scheme: str = "per_token"

    def __post_init__(self):
        for name, least in (("page_size", 1), ("num_pages", 1), ("max_num_batched_tokens", 1),
                            ("max_num_seqs", 1), ("num_host_pages", 0),
                            ("initial_output_guess", 0), ("max_prefill_chunk", 1),
                            ("expected_output_len", 0), ("seed", 0)):
            value = getattr(self, name)
            if value is not None or name not in ("max_prefill_chunk", "expected_output_len"):
                # stored as Python ints (a NumPy int64 fails in a summary's JSON)
                object.__setattr__(self, name, check_int(value, name, minimum=least))
        object.__setattr__(self, "enable_prefix_caching",
                           check_bool(self.enable_prefix_caching, "enable_prefix_caching"))
        if not is_number(self.watermark):
            raise TypeError(f"watermark: expected a fraction in [0, 1), got {self.watermark!r} "
                            f"({type(self.watermark).__name__})")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark: expected a fraction in [0, 1), got {self.watermark}")
        object.__setattr__(self, "watermark", python_number(self.watermark))
        # is_one_of: an array of names would pass `in` as its one name, or fail as ambiguous
        if not is_one_of(self.preemption_mode, PREEMPTION_MODES):
            raise ValueError(f"preemption_mode: expected one of {PREEMPTION_MODES}, got "
                             f"{self.preemption_mode!r}")
        if self.kv_dtype is not None:   # stored as its canonical name (quant.kv_dtype_name)
            object.__setattr__(self, "kv_dtype", kv_format(self.kv_dtype).name)
        check_scheme(self.kv_scale_scheme, "kv_scale_scheme")
        if not is_one_of(self.allocation, ALLOCATIONS):
            raise ValueError(f"allocation: expected one of {ALLOCATIONS}, got "
                             f"{self.allocation!r}")

    @property
    def watermark_pages(self) -> int:
        return int(self.watermark * self.num_pages)

    @property
    def chunk_limit(self) -> int:
        return self.max_prefill_chunk or self.max_num_batched_tokens

    def pages_to_finish(self, length: int) -> int:
        """The most pages a request reaching `length` tokens (prompt + output) holds when
        served alone. Its last token's K/V are never written. With prefix caching that slot's
        page is room enough for the one copy on write (a prompt, or a resumed prompt +
        output, of k whole cached pages, computing its last token, holds k + 1 pages for a
        moment); without, nothing is ever copied: the written tokens are the whole need."""
        held = length if self.enable_prefix_caching else length - 1
        return -(-held // self.page_size)
