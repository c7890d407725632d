"""GPU check (issue 15): ragrec's GPU claims measured in ONE prepared command on a lent NVIDIA H200.

One process, sized to finish well inside 8 minutes on an H200, writes ``gpu_results.json`` and
``gpu_results.md`` into ``--out`` (rewritten after every section, so a run cut short still leaves what it
measured). Give the ``run`` call ``timeout_s`` 540: ``--budget-s`` only skips sections not yet started.

Device command (the ``run`` tool; ``carry``: ``.gpu_wheels``, ``.ragrec_cache/models/tiny-random-llama``; once,
here, beforehand: ``bash scripts/gpu_check_wheels.sh``, which downloads the pydantic wheels into ``.gpu_wheels``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu_wheels/*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT --tokenizer .ragrec_cache/models/tiny-random-llama --budget-s 420

Dry run (CPU, tiny random models, same code paths and output files, seconds; on a busy shared CPU add
``OMP_NUM_THREADS=1 RAGREC_TORCH_THREADS=1``, as ``tests/unit/test_gpu_check.py`` does)::

    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check

Sections (``--sections`` runs a subset; each is independent: a failing one records its error and the others
still run; once ``--budget-s`` seconds have passed, the remaining ones are recorded as skipped):

* ``peak``: the measured matmul peak (``torch.mm`` of two n x n matrices in ``--dtype``, 2 n^3 FLOPs per
  product), the denominator of every "fraction of peak".
* ``scoring``: :meth:`ragrec.llm.hf_engine.HFEngine.score_yes_no` (length-sorted left-padded batches, one
  forward each) vs the reference (``benchmarks.bench_scoring.reference_scores``: one
  ``generate(max_new_tokens=2, output_logits=True, return_dict_in_generate=True)`` per prompt), both on the same
  model object and the same 256 CTR prompts (~290 tokens with the chat template), at the SmolLM2-135M and the
  Llama-3.1-8B shape. Prompts/s, ratio (goal >= 5x at the 8B shape), max |P_engine - P_reference|, and the
  fraction of the peak of ``2 x decoder-layer params x prompt tokens + 2 x head params x prompts`` FLOPs (the
  work needed to score; attention scores, padding and the reference's second decode step are not counted).
* ``lora``: :func:`ragrec.training.lora.train_loop` standalone (``tokenize_examples``, ``bucketed_batches``,
  ``collate``, ``answer_loss``; ``lora.precision: auto``: bf16 base, float32 adapter) on the 8B shape.
  Examples/s and real tokens/s of the steps after the warm-up ones; fraction of peak with ``4 x decoder-layer
  params x tokens`` (forward + activation gradients: the frozen base gets no weight gradients) and, for
  comparison with the usual MFU convention, ``6 x params x tokens``. 8-bit is not run (see ``BNB_NOTE``).
* ``small_models``: LightGCN, SASRec and the alignment projector (``ragrec.training.{lightgcn,sasrec,
  projector}``, standalone, ML-100K-sized random data) on ``--device`` vs the same loop on this machine's CPU
  cores: optimizer steps/s of the epochs after the first, ratio.
* ``serving``: :meth:`ragrec.serving.chain.Predictor.score` (prompts + engine) driven by 16 client threads,
  one (user, item) per request: a micro-batcher with ``@serve.batch``'s semantics and ``ServeConfig``'s
  defaults (calls arriving within 10 ms share one call of at most 16 requests) vs one request per call (one
  engine call at a time, as the replica without batching); requests/s, ratio (goal >= 3x), max |dP|.

Models: random weights of the real shapes, built on the device (meta-device init, ``to_empty``, then normal
init in place, RoPE buffers rebuilt): FLOP-bound timings are those of the real models. The tokenizer is
SmolLM2's (``--tokenizer``: the tiny-random-llama folder holds it); its ids are valid for both vocabularies.
Engine and trainer get the in-memory model through a patched ``load_causal_lm`` (no weights travel), and the
training loops their device through a patched ``ragrec.runtime.device`` (there is no device option yet).

Imports: nothing from ray, vllm, faiss, fastapi, starlette or uvicorn (the GPU image has none of them); pydantic
(``ragrec.config``) travels as wheels. ``meta.modules`` in the JSON lists every top-level module imported.
"""  # noqa: E501 (the device command is one line on purpose: paste it as it is)

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import queue
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ragrec` importable
    sys.path[:0] = [p for p in (str(REPO), str(REPO / "platform")) if p not in sys.path]

SECTIONS = ("peak", "scoring", "lora", "small_models", "serving")
SCORING_GOAL = 5.0
SERVING_GOAL = 3.0
BNB_WHEEL_BYTES = 43_139_553
BNB_NOTE = (
    f"8-bit: not run, bitsandbytes wheel is {BNB_WHEEL_BYTES / 1e6:.1f} MB "
    f"(bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl, {BNB_WHEEL_BYTES / 2**20:.1f} MiB): with the carried "
    "tokenizer folder (27.6 MiB), the pydantic wheels (2.7 MiB) and the working tree (2.2 MiB) the carry would be "
    "about 74 MiB, over the 64 MiB budget"
)
DEFAULT_TOKENIZER = REPO / ".ragrec_cache" / "models" / "tiny-random-llama"
JSON_NAME, MD_NAME = "gpu_results.json", "gpu_results.md"


# ----------------------------------------------------------------------------------------------------
# what runs


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture causal LM shape (random weights, normal(0, ``init_std``) init)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    rope_theta: float
    init_std: float = 0.02
    max_positions: int = 8192


SMOLLM2_135M = Shape("smollm2-135m", 576, 30, 9, 3, 1536, 49152, True, 100000.0)
LLAMA_8B = Shape("llama-3.1-8b", 4096, 32, 32, 8, 14336, 128256, False, 500000.0)
# --tiny: the same two roles at test size; a wider init gives P(yes) a spread, so agreement means something
TINY_SMALL = Shape("tiny-smollm2", 64, 2, 4, 2, 128, 49152, True, 100000.0, init_std=0.2)
TINY_LARGE = Shape("tiny-llama-8b", 96, 3, 6, 2, 192, 50304, False, 500000.0, init_std=0.2)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full GPU check or the ``--tiny`` dry run."""

    small_lm: Shape
    large_lm: Shape
    prompts: int
    k_history: int
    batch_sizes: tuple[int, ...]
    lora_examples: int
    lora_batch: int
    lora_warmup_steps: int
    graph: tuple[int, int, int]  # users, items, interactions (ML-100K: 943, 1682, 100,000)
    epochs: dict[str, int]  # per small model, the first one a warm-up
    requests: int
    concurrency: int
    peak_n: int
    peak_repeat: int


GPU_PLAN = Plan(
    SMOLLM2_135M,
    LLAMA_8B,
    prompts=256,
    k_history=10,
    batch_sizes=(16, 64),
    lora_examples=96,
    lora_batch=8,
    lora_warmup_steps=3,
    graph=(943, 1682, 100_000),
    epochs={"lightgcn": 4, "sasrec": 6, "projector": 8},
    requests=256,
    concurrency=16,
    peak_n=8192,
    peak_repeat=10,
)
TINY_PLAN = Plan(
    TINY_SMALL,
    TINY_LARGE,
    prompts=8,
    k_history=10,
    batch_sizes=(4,),
    lora_examples=8,
    lora_batch=4,
    lora_warmup_steps=1,
    graph=(60, 80, 1500),
    epochs={"lightgcn": 2, "sasrec": 2, "projector": 2},
    requests=32,
    concurrency=16,
    peak_n=256,
    peak_repeat=3,
)


# ----------------------------------------------------------------------------------------------------
# small helpers


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """``obj.name = value`` for the duration of the block."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def forced_device(device: str) -> Iterator[None]:
    """``ragrec.runtime.device("auto")`` answers ``device`` in the block (the training loops ask it for theirs)."""
    from ragrec import runtime

    real = runtime.device
    with patched(runtime, "device", lambda preferred="auto": real(device if preferred == "auto" else preferred)):
        yield


def sync(device: str) -> None:
    """Wait for the device's queued kernels (a no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def free_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back, so the next section starts clean."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12


def fraction(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Achieved / measured peak (None when the peak could not be measured)."""
    return None if not peak_tflops else tflops(flops, seconds) / peak_tflops


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (a pydantic error's first lines name the field)."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return f"{type(e).__name__}: {' | '.join(lines[:3])}"[:500]


# ----------------------------------------------------------------------------------------------------
# models


def build_causal_lm(shape: Shape, tokenizer: Any, device: str, dtype: Any, seed: int = 0) -> Any:
    """A ``LlamaForCausalLM`` of ``shape`` with random weights, in ``dtype`` on ``device``, in eval mode.

    Built on the meta device (no host copy of the weights), materialised with ``to_empty`` and initialised in
    place: normal(0, ``init_std``) matrices, unit norms; the tied head is re-tied and the RoPE buffers (not
    parameters, so left empty by ``to_empty``) rebuilt.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if len(tokenizer) > shape.vocab:
        raise ValueError(f"{shape.name}: {len(tokenizer)} tokenizer ids > vocabulary {shape.vocab}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        max_position_embeddings=shape.max_positions,
        initializer_range=shape.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device=device)
    if shape.tied:
        model.tie_weights()  # to_empty gave the head a tensor of its own
    init_in_place(model, shape.init_std, seed)
    rebuild_rope(model, device)
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def init_in_place(model: Any, std: float, seed: int) -> None:
    """normal(0, std) for every matrix, ones for norm weights, zeros for other vectors (one kernel per tensor)."""
    import torch

    with torch.no_grad():
        gen = None
        for name, p in model.named_parameters():  # a tied tensor is listed once
            if gen is None:
                gen = torch.Generator(device=p.device).manual_seed(seed)
            if p.ndim >= 2:
                p.normal_(0.0, std, generator=gen)
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()


def rebuild_rope(model: Any, device: str) -> None:
    """Replace every rotary-embedding module (it holds an ``inv_freq`` buffer) by a freshly built one."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if "inv_freq" in dict(child.named_buffers(recurse=False)):
                setattr(parent, name, type(child)(child.config).to(device))


def layer_params(model: Any) -> int:
    """Parameters of the decoder layers (what every token multiplies through), LoRA adapters excluded."""
    return int(sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and "lora_" not in n))


def head_params(model: Any) -> int:
    return int(model.get_output_embeddings().weight.numel())


def make_engine(model: Any, tokenizer: Any, llm_cfg: Any) -> Any:
    """An :class:`~ragrec.llm.hf_engine.HFEngine` on an in-memory model: its constructor runs as usual with
    ``load_causal_lm`` answering ``(model, tokenizer)``."""
    from ragrec.llm import hf_engine

    with patched(hf_engine, "load_causal_lm", lambda *_a, **_k: (model, tokenizer)):
        return hf_engine.HFEngine(llm_cfg)


def matmul_tflops(device: str, n: int, dtype: Any, repeat: int, warmup: int = 3) -> float:
    """Measured ``torch.mm`` throughput on ``device`` in ``dtype`` (TFLOP/s, 2 n^3 FLOPs per product)."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(warmup):
        torch.mm(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    sync(device)
    return 2.0 * n**3 * repeat / (time.perf_counter() - t0) / 1e12


# ----------------------------------------------------------------------------------------------------
# inputs


def ctr_samples(n: int, k: int) -> tuple[Any, Any]:
    """``(samples, dataset)``: the first ``n`` test samples of the default synthetic catalog, each with its ``k``
    most recent history items (``context_item_ids`` / ``context_ratings``), and the catalog (items, users).

    Synthetic, so it needs no data folder; K = 10 gives ReLLa prompts of ~290 tokens with SmolLM2's chat
    template, the length of the ML-100K ones.
    """
    import pyarrow.compute as pc

    from ragrec.config import DataConfig, RetrievalConfig
    from ragrec.data import load_dataset, rallrec_samples
    from ragrec.retrieval.history import select_history

    cfg = DataConfig(name="synthetic")
    ds = load_dataset(cfg)
    samples = rallrec_samples(ds.interactions, cfg)
    test = samples.filter(pc.equal(samples.column("split"), "test"))
    if test.num_rows < n:
        raise ValueError(f"the synthetic test split has {test.num_rows} samples, fewer than the {n} asked for")
    return select_history(test.slice(0, n), RetrievalConfig(k=k, strategy="recent"), None), ds


def lora_examples(prompts: Sequence[str], n: int) -> Any:
    """Arrow table (prompt, answer) of ``n`` examples cycling over ``prompts``, answers alternating Yes./No."""
    import pyarrow as pa

    from ragrec.llm.chat import ANSWER_NO, ANSWER_YES

    return pa.table(
        {
            "prompt": [prompts[i % len(prompts)] for i in range(n)],
            "answer": [ANSWER_YES if i % 2 == 0 else ANSWER_NO for i in range(n)],
        }
    )


def graph_data(users: int, items: int, edges: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random distinct (user, item) pairs with timestamps and item embeddings of the real sizes (ML-100K:
    384-d text, 64-d collaborative), for the small models' loops."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(users * items, size=edges, replace=False)
    return {
        "users": (pairs // items).astype(np.int64),
        "items": (pairs % items).astype(np.int64),
        "timestamps": rng.integers(0, 10**9, size=edges).astype(np.int64),
        "text_emb": rng.standard_normal((items, 384), dtype=np.float32),
        "colla_emb": rng.standard_normal((items, 64), dtype=np.float32),
    }


# ----------------------------------------------------------------------------------------------------
# the run


@dataclass
class Check:
    """One run: options, plan, shared lazily built inputs, and the results written after every section."""

    device: str
    dtype_name: str
    tiny: bool
    out: Path
    tokenizer_path: Path
    budget_s: float
    plan: Plan
    command: str
    t0: float = field(default_factory=time.perf_counter)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    sections: dict[str, dict] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{self.elapsed():6.1f}s] {msg}", flush=True)

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """``(fn(), wall seconds)`` with the device synchronised before and after."""
        sync(self.device)
        t = time.perf_counter()
        out = fn()
        sync(self.device)
        return out, time.perf_counter() - t

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per run (a failed build is retried by the next section that needs it)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def tokenizer(self) -> Any:
        from ragrec.llm.registry import load_tokenizer

        if not (self.tokenizer_path / "tokenizer.json").exists():
            raise FileNotFoundError(
                f"--tokenizer {self.tokenizer_path} holds no tokenizer.json; build it with RAGREC_CACHE=.ragrec_cache "
                "python -c \"from ragrec.llm.registry import model_path; model_path('tiny-random-llama')\""
            )
        return self.cached("tokenizer", lambda: load_tokenizer(str(self.tokenizer_path)))

    def samples(self) -> tuple[Any, Any]:
        n = max(self.plan.prompts, self.plan.requests)
        return self.cached("samples", lambda: ctr_samples(n, self.plan.k_history))

    def prompts(self) -> list[str]:
        from ragrec.llm.prompts_ctr import build_ctr_prompts

        def build() -> list[str]:
            samples, ds = self.samples()
            return build_ctr_prompts(samples.slice(0, self.plan.prompts), ds.items, ds.users)

        return self.cached("prompts", build)

    def peak(self) -> float | None:
        """The measured matmul peak (TFLOP/s); measured here when the ``peak`` section did not run; None if it fails."""
        try:
            return self.cached(
                "peak", lambda: matmul_tflops(self.device, self.plan.peak_n, self.dtype, self.plan.peak_repeat)
            )
        except Exception as e:  # a fraction of peak is then n/a; the section itself goes on
            self.log(f"matmul peak failed: {error_line(e)}")
            return None

    # ------------------------------------------------------------------------------------------------
    def run(self, names: Sequence[str]) -> int:
        """Run ``names`` in order; returns the exit status (1 when a section failed)."""
        for name in names:
            if self.elapsed() > self.budget_s:
                self.sections[name] = {"status": "skipped", "reason": f"budget of {self.budget_s:g} s exceeded"}
                self.log(f"{name}: skipped (budget {self.budget_s:g} s exceeded)")
            else:
                self.sections[name] = self.run_section(name)
            self.write()
        failed = [n for n, s in self.sections.items() if s["status"] == "error"]
        self.log(f"done in {self.elapsed():.1f} s; failed sections: {failed or 'none'}; wrote {self.out}")
        return 1 if failed else 0

    def run_section(self, name: str) -> dict:
        """One section, its error (if any) recorded instead of raised."""
        self.log(f"{name}: start")
        reset_peak_memory(self.device)
        t = time.perf_counter()
        try:
            result = {"status": "ok", **SECTION_FUNCS[name](self)}
        except Exception as e:
            result = {"status": "error", "error": error_line(e), "traceback": traceback.format_exc()}
            self.log(f"{name}: FAILED {error_line(e)}")
        result["seconds"] = time.perf_counter() - t
        mem = peak_memory_gib(self.device)
        if mem is not None:
            result["peak_gpu_memory_gib"] = mem
        free_memory()
        self.log(f"{name}: {result['status']} in {result['seconds']:.1f} s")
        return result

    # ------------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        """Machine, versions, plan and ``modules``: every top-level module imported so far (a None entry of
        ``sys.modules`` marks a module as absent, so it does not count)."""
        torch = sys.modules.get("torch")
        cuda = torch is not None and self.device.startswith("cuda")
        meta = {
            "command": self.command,
            "started": self.started,
            "wall_s": self.elapsed(),
            "budget_s": self.budget_s,
            "device": self.device,
            "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
            "dtype": self.dtype_name,
            "tiny": self.tiny,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "cpu_count": os.cpu_count(),
            "plan": asdict(self.plan),
            "modules": sorted({m.split(".")[0] for m, mod in list(sys.modules.items()) if mod is not None}),
        }
        for pkg in ("torch", "transformers", "peft", "torch_geometric", "pydantic"):
            meta[pkg] = getattr(sys.modules.get(pkg), "__version__", None)
        return meta

    def write(self) -> None:
        """Both result files, each written to a temporary name and renamed."""
        self.out.mkdir(parents=True, exist_ok=True)
        doc = {"meta": self.meta(), "goals": goals(self.sections), "sections": self.sections}
        for name, text in ((JSON_NAME, json.dumps(doc, indent=1, default=_json_default)), (MD_NAME, render_md(doc))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


# ----------------------------------------------------------------------------------------------------
# sections


def section_peak(ck: Check) -> dict:
    n = ck.plan.peak_n
    value = ck.peak()
    if value is None:
        raise RuntimeError("the matmul peak could not be measured (see the log)")
    return {"rows": [{"case": f"torch.mm {n}x{n} {ck.dtype_name}", "unit": "TFLOP/s", "rate": value}]}


def section_scoring(ck: Check) -> dict:
    from ragrec.config import LLMConfig

    llm_cfgs = [
        LLMConfig(model="in-memory", dtype=ck.dtype_name, device=ck.device, batch_size=b) for b in ck.plan.batch_sizes
    ]
    prompts = ck.prompts()
    rows = []
    for shape in (ck.plan.small_lm, ck.plan.large_lm):
        rows += score_shape(ck, shape, prompts, llm_cfgs)
        free_memory()
    goal = f"engine >= {SCORING_GOAL:g}x the reference prompts/s at the {ck.plan.large_lm.name} shape"
    return {"rows": rows, "goal": goal}


def score_shape(ck: Check, shape: Shape, prompts: list[str], llm_cfgs: list[Any]) -> list[dict]:
    """Reference loop, then the engine at each batch size, on one model of ``shape`` (untimed warm-ups first)."""
    from benchmarks.bench_scoring import BF16_ATOL, PROB_ATOL, prompt_token_ids, reference_scores

    tok = ck.tokenizer()
    model = build_causal_lm(shape, tok, ck.device, ck.dtype)
    engines = [make_engine(model, tok, cfg) for cfg in llm_cfgs]
    ck.log(f"scoring {shape.name}: model built ({sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M params)")
    tokens = sum(len(x) for x in prompt_token_ids(tok, prompts))
    flops = 2.0 * layer_params(model) * tokens + 2.0 * head_params(model) * len(prompts)
    yes, no = engines[0].yes_id, engines[0].no_id
    reference_scores(model, tok, prompts[:2], yes, no)
    ref, ref_s = ck.timed(lambda: reference_scores(model, tok, prompts, yes, no))
    ck.log(f"scoring {shape.name}: reference {len(prompts) / ref_s:,.1f} prompts/s")
    tol = PROB_ATOL if ck.dtype_name == "float32" else BF16_ATOL
    peak = ck.peak()
    rows = []
    for engine in engines:
        engine.score_yes_no(prompts[: engine.cfg.batch_size])
        probs, s = ck.timed(lambda e=engine: e.score_yes_no(prompts))
        diff = float(np.max(np.abs(np.asarray(probs, np.float32) - ref)))
        rows.append(
            {
                "case": f"{shape.name} HFEngine.score_yes_no batch {engine.cfg.batch_size}",
                "unit": "prompts",
                "rate": len(prompts) / s,
                "reference": "per-prompt generate(max_new_tokens=2, output_logits=True)",
                "reference_rate": len(prompts) / ref_s,
                "ratio": ref_s / s,
                "max_abs_dprob": diff,
                "tolerance": tol,
                "verified": diff < tol,
                "prob_range": [float(ref.min()), float(ref.max())],
                "prob_std": float(ref.std()),
                "prompt_tokens_mean": tokens / len(prompts),
                "fraction_of_peak": fraction(flops, s, peak),
                "reference_fraction_of_peak": fraction(flops, ref_s, peak),
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
        ck.log(f"scoring {shape.name}: {rows[-1]['case']}: {rows[-1]['ratio']:.2f}x, max |dP| {diff:.1e}")
    return rows


def section_lora(ck: Check) -> dict:
    """:func:`ragrec.training.lora.train_loop` standalone on the large shape (loader patched to build it)."""
    import torch

    from ragrec.config import LoRAConfig
    from ragrec.llm import registry
    from ragrec.training import lora

    plan, shape, tok = ck.plan, ck.plan.large_lm, ck.tokenizer()
    cfg = LoRAConfig(batch_size=plan.lora_batch, epochs=1, max_tokens=512)
    built: dict[str, Any] = {}

    def loader(_name: str, dtype: str = "auto", device: str = "cpu", **kwargs: Any) -> tuple[Any, Any]:
        if kwargs:
            raise ValueError(f"gpu_check builds plain models only, got loader options {sorted(kwargs)}")
        model = build_causal_lm(shape, tok, device, registry.resolve_dtype(dtype, device))
        built.update(model=model, layer_params=layer_params(model), dtype=str(next(model.parameters()).dtype))
        return model, tok

    config = {"cfg": cfg.model_dump(), "seed": 0, "model_name": shape.name}
    config["examples"] = lora_examples(ck.prompts(), plan.lora_examples)
    with tempfile.TemporaryDirectory(prefix="gpu-check-lora-") as out:
        with forced_device(ck.device), patched(registry, "load_causal_lm", loader):
            history, wall = ck.timed(lambda: lora.train_loop({**config, "out_dir": out}))
    timed = history[plan.lora_warmup_steps :]
    if not timed:
        raise RuntimeError(f"lora: {len(history)} steps, none after the {plan.lora_warmup_steps} warm-up steps")
    seconds = sum(h["seconds"] for h in timed)
    tokens = sum(h["tokens"] for h in timed)
    examples = len(timed) * plan.lora_batch  # lora_examples is a multiple of the batch: every step is full
    peak, n = ck.peak(), built["layer_params"]
    losses = [h["loss"] for h in history]
    if not np.isfinite(losses).all():
        raise RuntimeError(f"lora: non-finite loss in {losses}")
    del built["model"]
    row = {
        "case": f"{shape.name} LoRA r={cfg.r} on {'+'.join(cfg.target_modules)}, batch {plan.lora_batch}",
        "unit": "examples",
        "rate": examples / seconds,
        "tokens_per_s": tokens / seconds,
        "steps_timed": len(timed),
        "warmup_steps": plan.lora_warmup_steps,
        "base_dtype": built["dtype"],
        "fraction_of_peak_4NT": fraction(4.0 * n * tokens, seconds, peak),
        "mfu_6NT": fraction(6.0 * n * tokens, seconds, peak),
        "decoder_layer_params": n,
        "loss_first_last": [losses[0], losses[-1]],
        "wall_s_with_build": wall,
        "cuda": torch.cuda.is_available(),
    }
    notes = [
        "fraction_of_peak_4NT = 4 x decoder-layer params x real tokens / s / peak: forward (2NT) + activation "
        "gradients (2NT); the frozen base gets no weight gradients, LoRA's own FLOPs and the answer-position head "
        "are negligible. mfu_6NT: the usual 6NT convention of full fine-tuning, for comparison only.",
        BNB_NOTE,
    ]
    return {"rows": [row], "notes": notes}


def section_small_models(ck: Check) -> dict:
    """Each loop on ``--device`` then on the CPU (``torch_device`` sets all cores' threads there)."""
    data = graph_data(*ck.plan.graph)
    rows = []
    for name, trainer in SMALL_TRAINERS.items():
        epochs = ck.plan.epochs[name]
        dev_rate = small_model_rate(ck, trainer, data, epochs, ck.device)
        cpu_rate = small_model_rate(ck, trainer, data, epochs, "cpu")
        import torch

        rows.append(
            {
                "case": f"{name} train loop on {ck.device}",
                "unit": "steps",
                "rate": dev_rate,
                "reference": f"the same loop on the CPU ({torch.get_num_threads()} threads)",
                "reference_rate": cpu_rate,
                "ratio": dev_rate / cpu_rate,
                "epochs_timed": epochs - 1,
            }
        )
        ck.log(f"small_models: {name}: {dev_rate:,.1f} vs {cpu_rate:,.1f} steps/s")
    return {"rows": rows, "notes": [f"random ML-100K-sized data: {ck.plan.graph} users, items, interactions"]}


def small_model_rate(ck: Check, trainer: Callable, data: dict, epochs: int, device: str) -> float:
    """Optimizer steps/s of the epochs after the first (the loop's own per-epoch training seconds)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-small-") as out, forced_device(device):
        history, steps_per_epoch = trainer(data, epochs, out)
    timed = history[1:]
    if len(timed) != epochs - 1:
        raise RuntimeError(f"expected {epochs} epochs in the history, got {len(history)}")
    return steps_per_epoch * len(timed) / sum(h["seconds"] for h in timed)


def run_lightgcn(data: dict, epochs: int, out: str) -> tuple[list[dict], int]:
    from ragrec.config import LightGCNConfig
    from ragrec.training.lightgcn import train_lightgcn
    from ragrec.training.ray_train import TrainOptions

    cfg = LightGCNConfig(epochs=epochs)
    n_users, n_items = int(data["users"].max()) + 1, data["text_emb"].shape[0]
    res = train_lightgcn(data["users"], data["items"], n_users, n_items, cfg, opts=TrainOptions(seed=0, out_dir=out))
    return res.history, -(-len(data["users"]) // cfg.batch_size)  # distinct pairs: every one is an edge


def run_sasrec(data: dict, epochs: int, out: str) -> tuple[list[dict], int]:
    from ragrec.config import SASRecConfig
    from ragrec.training.ray_train import TrainOptions
    from ragrec.training.sasrec import train_sasrec

    cfg = SASRecConfig(epochs=epochs)
    n_users, n_items = int(data["users"].max()) + 1, data["text_emb"].shape[0]
    opts = TrainOptions(seed=0, out_dir=out)
    users, items, times = data["users"], data["items"], data["timestamps"]
    res = train_sasrec(users, items, times, n_users, n_items, cfg, opts=opts, eval_every=epochs)
    trained = int((np.bincount(data["users"], minlength=n_users) >= 3).sum())  # a held-out item + a training pair
    return res.history, -(-trained // cfg.batch_size)


def run_projector(data: dict, epochs: int, out: str) -> tuple[list[dict], int]:
    from ragrec.config import ProjectorConfig
    from ragrec.training.projector import train_projector
    from ragrec.training.ray_train import TrainOptions

    cfg = ProjectorConfig(epochs=epochs)
    res = train_projector(data["text_emb"], data["colla_emb"], cfg, opts=TrainOptions(seed=0, out_dir=out))
    n = data["text_emb"].shape[0]
    return res.history, n // cfg.batch_size + (n % cfg.batch_size >= 2)  # a 1-row batch is skipped


SMALL_TRAINERS: dict[str, Callable[[dict, int, str], tuple[list[dict], int]]] = {
    "lightgcn": run_lightgcn,
    "sasrec": run_sasrec,
    "projector": run_projector,
}


class MicroBatcher:
    """``@serve.batch`` without Ray Serve: calls arriving within ``wait_s`` of the first queued one share one
    ``fn(list)`` call of at most ``max_batch`` items; ``self(item)`` blocks until its result is there."""

    def __init__(self, fn: Callable[[list], Sequence], max_batch: int, wait_s: float) -> None:
        self.fn, self.max_batch, self.wait_s = fn, max_batch, wait_s
        self.sizes: list[int] = []
        self._q: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._serve, daemon=True)
        self._worker.start()

    def __call__(self, item: Any) -> Any:
        fut: Future = Future()
        self._q.put((item, fut))
        return fut.result()

    def close(self) -> None:
        self._q.put(None)
        self._worker.join()

    def _collect(self, first: tuple) -> tuple[list[tuple], bool]:
        """The batch opened by ``first`` and whether the stop sentinel came while collecting it."""
        batch, deadline = [first], time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                nxt = self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _serve(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            self.sizes.append(len(batch))
            try:
                outs = self.fn([item for item, _ in batch])
                for (_, fut), out in zip(batch, outs):
                    fut.set_result(out)
            except Exception as e:
                for _, fut in batch:
                    fut.set_exception(e)


class SerialReplica:
    """One request per ``fn([item])`` call, one call at a time (a replica without batching)."""

    def __init__(self, fn: Callable[[list], Sequence]) -> None:
        self.fn, self._lock = fn, threading.Lock()

    def __call__(self, item: Any) -> Any:
        with self._lock:
            return self.fn([item])[0]


def drive(call: Callable[[Any], Any], requests: Sequence[Any], concurrency: int) -> tuple[np.ndarray, float, Any]:
    """``(P(yes) per request, wall seconds, latency per request)`` of ``concurrency`` closed-loop client threads."""
    probs = np.zeros(len(requests), np.float32)
    latency = np.zeros(len(requests))

    def one(i: int) -> None:
        t = time.perf_counter()
        probs[i] = np.asarray(call(requests[i]))[0]
        latency[i] = time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(len(requests))))
    return probs, time.perf_counter() - t0, latency


def section_serving(ck: Check) -> dict:
    from benchmarks.bench_scoring import BF16_ATOL, PROB_ATOL
    from ragrec.config import LLMConfig, RunConfig, ServeConfig
    from ragrec.serving.chain import Predictor

    serve = ServeConfig()
    samples, ds = ck.samples()
    requests = [samples.slice(i, 1) for i in range(ck.plan.requests)]
    llm = LLMConfig(model="in-memory", dtype=ck.dtype_name, device=ck.device, batch_size=serve.max_batch_size)
    shape, tok = ck.plan.small_lm, ck.tokenizer()
    engine = make_engine(build_causal_lm(shape, tok, ck.device, ck.dtype), tok, llm)
    predictor = Predictor(RunConfig(), ds.items, ds.users, engine)
    predictor.score(requests[: serve.max_batch_size])  # warm-up: both call shapes
    predictor.score(requests[:1])
    one, one_s, one_lat = drive(SerialReplica(predictor.score), requests, ck.plan.concurrency)
    batcher = MicroBatcher(predictor.score, serve.max_batch_size, serve.batch_wait_timeout_s)
    try:
        batched, batched_s, batched_lat = drive(batcher, requests, ck.plan.concurrency)
    finally:
        batcher.close()
    diff = float(np.max(np.abs(batched - one)))
    tol = PROB_ATOL if ck.dtype_name == "float32" else BF16_ATOL
    row = {
        "case": f"{shape.name} Predictor.score micro-batched (max {serve.max_batch_size}, "
        f"wait {serve.batch_wait_timeout_s * 1000:g} ms), {ck.plan.concurrency} client threads",
        "unit": "requests",
        "rate": len(requests) / batched_s,
        "reference": "one request per Predictor.score call, one call at a time",
        "reference_rate": len(requests) / one_s,
        "ratio": one_s / batched_s,
        "mean_batch": float(np.mean(batcher.sizes)),
        "p50_ms": float(np.percentile(batched_lat, 50) * 1e3),
        "p99_ms": float(np.percentile(batched_lat, 99) * 1e3),
        "reference_p50_ms": float(np.percentile(one_lat, 50) * 1e3),
        "reference_p99_ms": float(np.percentile(one_lat, 99) * 1e3),
        "max_abs_dprob": diff,
        "tolerance": tol,
        "verified": diff < tol,
    }
    return {"rows": [row], "goal": f"micro-batched >= {SERVING_GOAL:g}x one-at-a-time requests/s"}


SECTION_FUNCS: dict[str, Callable[[Check], dict]] = {
    "peak": section_peak,
    "scoring": section_scoring,
    "lora": section_lora,
    "small_models": section_small_models,
    "serving": section_serving,
}


# ----------------------------------------------------------------------------------------------------
# report


def goals(sections: dict[str, dict]) -> dict[str, dict]:
    """The issue's two ratio goals, from the rows that measured them (absent when their section did not run)."""
    out = {}
    small = (SMOLLM2_135M.name, TINY_SMALL.name)
    scoring = [r for r in sections.get("scoring", {}).get("rows", []) if not r["case"].startswith(small)]
    if scoring:
        best = max(scoring, key=lambda r: r["ratio"])
        out["scoring_large_shape"] = {"goal": SCORING_GOAL, "ratio": best["ratio"], "case": best["case"]}
    serving = sections.get("serving", {}).get("rows", [])
    if serving:
        out["serving_batching"] = {"goal": SERVING_GOAL, "ratio": serving[0]["ratio"], "case": serving[0]["case"]}
    for g in out.values():
        g["met"] = g["ratio"] >= g["goal"]
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return str(x)


def render_rows(rows: list[dict]) -> list[str]:
    main = ("case", "unit", "rate", "reference_rate", "ratio")
    lines = ["| case | unit | rate /s | reference rate /s | ratio | details |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        details = "; ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in main)
        cells = [_fmt(r.get(k, "")) for k in main]
        cells[4] = f"**{cells[4]}x**" if "ratio" in r else ""
        lines.append(f"| {' | '.join(cells)} | {details} |")
    return lines


def render_md(doc: dict) -> str:
    """The human-readable results: machine line, goals, then one block per section."""
    m = doc["meta"]
    lines = [
        "# ragrec GPU check",
        "",
        f"`{m['command']}` — {m['started']}, {m['wall_s']:.0f} s wall",
        "",
        f"{m['device']} ({m['device_name']}), {m['dtype']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"peft {m['peft']}, Python {m['python']}, {m['cpu_count']} CPUs{' — DRY RUN (--tiny)' if m['tiny'] else ''}",
        "",
        "## Goals",
        "",
    ]
    for name, g in doc["goals"].items():
        met = "met" if g["met"] else "NOT met"
        lines.append(f"- {name}: {g['ratio']:.2f}x (goal >= {g['goal']:g}x: {met}), {g['case']}")
    for name, s in doc["sections"].items():
        lines += ["", f"## {name}: {s['status']}" + (f" ({s['seconds']:.1f} s)" if "seconds" in s else ""), ""]
        if s["status"] == "error":
            lines += [f"    {s['error']}"]
        if s["status"] == "skipped":
            lines += [s["reason"]]
        if s.get("rows"):
            lines += render_rows(s["rows"])
        lines += [f"- {n}" for n in ([s["goal"]] if "goal" in s else []) + s.get("notes", [])]
        if "peak_gpu_memory_gib" in s:
            lines.append(f"- peak GPU memory {s['peak_gpu_memory_gib']:.1f} GiB")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# command line


def parse_sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or text!r}; choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]


def parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_results.json / gpu_results.md")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="models' dtype")
    p.add_argument("--tiny", action="store_true", help="tiny random models and inputs (a dry run in seconds)")
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="folder with the SmolLM2 tokenizer")
    p.add_argument("--sections", type=parse_sections, default=list(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--budget-s", type=float, default=420.0, help="then skip the remaining sections (%(default)s)")
    p.add_argument("--prompts", type=int, default=None, help="scoring prompts (default: 256, --tiny 8)")
    p.add_argument("--batch-sizes", type=parse_ints, default=None, help="engine batch sizes (default 16,64; --tiny 4)")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = TINY_PLAN if args.tiny else GPU_PLAN
    overrides = {k: v for k, v in (("prompts", args.prompts), ("batch_sizes", args.batch_sizes)) if v is not None}
    return replace(plan, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for var, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device; use --device cpu")
    check = Check(
        device=args.device,
        dtype_name=args.dtype,
        tiny=args.tiny,
        out=args.out,
        tokenizer_path=args.tokenizer.resolve(),
        budget_s=args.budget_s,
        plan=make_plan(args),
        command="python " + " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
    )
    check.log(f"gpu_check on {args.device} ({args.dtype}{', tiny' if args.tiny else ''}): {', '.join(args.sections)}")
    return check.run(args.sections)


if __name__ == "__main__":
    sys.exit(main())
