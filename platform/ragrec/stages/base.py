"""The one generic LLM stage: a table of texts -> a table of outputs, on a Ray Data actor pool.

``run_llm_stage`` splits its input into checkpoint blocks of ``block_size`` rows. Each block is one
Ray Data block and one ``map_batches`` call on an actor that holds the engine (``hf`` in-process
transformers, or a sentence encoder); results stream back to the driver and every finished block is
written atomically to ``<artifact>.partial/blocks/``. A resumed run reads the finished blocks and
sends only the missing ones to Ray, so a crash after 90% of the LLM calls loses at most one block
per actor. Sampling is seeded per block (``seed + block_index``), so the output does not depend on
how the work was split between runs or actors.

The ``vllm`` engine goes through ``ray.data.llm`` processors instead (``ragrec.llm.vllm_engine``);
the block bookkeeping is the same. With ``llm.actors: 0`` the blocks go through the same
:class:`LLMWorker` in this process, without Ray, and the engine stays loaded for the next stage
(:func:`in_process_worker`): the same outputs without an actor's start-up, for small work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute

from ..artifacts import Artifact, spec_fields
from ..config import LLMConfig

log = logging.getLogger("ragrec.stages")

Op = Literal["generate", "score", "embed"]


def actor_threads(cpus: int, actors: int) -> int:
    """Torch threads of each of ``actors`` CPU actors sharing ``cpus`` free cores: a share each, at least one
    (every actor taking all cores oversubscribes them)."""
    return max(1, cpus // max(1, actors))


class LLMWorker:
    """Ray Data actor: loads the engine once, then maps blocks of texts to outputs."""

    def __init__(
        self,
        op: Op,
        llm_cfg: dict,
        params: dict,
        adapter_path: str | None = None,
        encoder: str | None = None,
        threads: int | None = None,
    ):
        import torch

        from ..runtime import torch_threads

        torch.set_num_threads(threads or torch_threads())
        self.op = op
        self.params = params
        cfg = LLMConfig.model_validate(llm_cfg)
        if op == "embed" and encoder:
            from ..encoders import load_encoder

            self.encoder = load_encoder(encoder, cfg)
            self.engine = None
        else:
            from ..llm import load_engine

            self.engine = load_engine(cfg, adapter_path=adapter_path)
            self.encoder = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Ray may hand over several checkpoint blocks in one batch: each is processed on its own so
        # that its seed, and therefore its output, does not depend on how the blocks were bundled.
        blocks = batch.column("block").to_numpy()
        parts = [
            self._block(batch.filter(pa.compute.equal(batch.column("block"), b)), int(b)) for b in np.unique(blocks)
        ]
        return pa.concat_tables(parts)

    def _block(self, part: pa.Table, block: int) -> pa.Table:
        texts = part.column("text").to_pylist()
        p = self.params
        if self.op == "generate":
            from ..llm.engine import Sampling

            out = self.engine.generate(texts, Sampling.from_params(p, seed_offset=block))
            col = pa.array(out, pa.string())
        elif self.op == "score":
            col = pa.array(np.asarray(self.engine.score_yes_no(texts), dtype=np.float32), pa.float32())
        else:
            if self.encoder is not None:
                emb = np.asarray(self.encoder.encode(texts), dtype=np.float32)
            else:
                emb = np.asarray(
                    self.engine.embed(texts, pooling=p.get("pooling", "mean"), max_tokens=p.get("max_tokens", 256)),
                    dtype=np.float32,
                )
            col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1])
        return pa.table({"row": part.column("row"), "block": part.column("block"), "output": col})


_IN_PROCESS: dict[tuple, LLMWorker] = {}


def in_process_worker(
    op: Op, llm_cfg: LLMConfig, params: dict, *, adapter_path: str | None = None, encoder: str | None = None
) -> LLMWorker:
    """The :class:`LLMWorker` of ``llm.actors: 0``: built once per engine (model config, adapter, encoder) and
    kept for the next stage, so a run of small stages loads each model once. One is kept at a time."""
    key = ("encoder", encoder) if op == "embed" and encoder else ("llm", adapter_path)
    key += (llm_cfg.model_dump_json(),)
    worker = _IN_PROCESS.get(key)
    if worker is None:
        _IN_PROCESS.clear()  # one engine in memory at a time
        worker = _IN_PROCESS[key] = LLMWorker(op, llm_cfg.model_dump(), params, adapter_path, encoder)
    worker.op, worker.params = op, params
    return worker


@dataclass
class StageOutput:
    values: pa.Array
    reused: list[int] = field(default_factory=list)
    computed: list[int] = field(default_factory=list)

    def manifest(self) -> dict:
        return {"rows": len(self.values), "blocks_reused": self.reused, "blocks_computed": self.computed}


def _blocks(n: int, block_size: int) -> list[tuple[int, int, int]]:
    return [(b, s, min(s + block_size, n)) for b, s in enumerate(range(0, n, block_size))]


def run_llm_stage(
    art: Artifact,
    texts: list[str] | pa.Array,
    *,
    op: Op,
    llm_cfg: LLMConfig,
    params: dict[str, Any] | None = None,
    block_size: int = 64,
    adapter_path: str | None = None,
    encoder: str | None = None,
    desc: str | None = None,
) -> StageOutput:
    """Map ``texts`` through the LLM op with block checkpoints in ``art``.

    ``values`` is in input order: a string array (generate), float32 array (score) or
    fixed-size-list<float32> (embed). ``reused`` / ``computed`` list the block indices a resumed run
    took from its checkpoints / sent to the engine; :meth:`StageOutput.manifest` puts them in the
    artifact manifest.
    """

    from ..runtime import init

    params = dict(params or {})
    texts = pa.array(texts, pa.string()) if not isinstance(texts, pa.Array) else texts
    n = len(texts)
    blocks = _blocks(n, block_size)
    done = art.finished_blocks()
    todo = [b for b in blocks if b[0] not in done]
    if todo and llm_cfg.actors == 0:  # in this process: no Ray
        worker = in_process_worker(op, llm_cfg, params, adapter_path=adapter_path, encoder=encoder)
        _collect(art, (worker(t) for t in _block_tables(texts, todo)), todo, desc or art.stage)
    elif todo:
        init()
        if llm_cfg.engine == "vllm":
            _run_vllm(art, texts, todo, op=op, llm_cfg=llm_cfg, params=params, adapter_path=adapter_path)
        else:
            _run_actor_pool(
                art,
                texts,
                todo,
                op=op,
                llm_cfg=llm_cfg,
                params=params,
                adapter_path=adapter_path,
                encoder=encoder,
                desc=desc or f"{art.stage}",
            )
    table = art.read_blocks()
    table = table.sort_by("row")
    if table.num_rows != n or not np.array_equal(table.column("row").to_numpy(), np.arange(n)):
        raise RuntimeError(
            f"stage {art.stage}: block checkpoints in {art.staging} are inconsistent "
            f"({table.num_rows} rows for {n} inputs); rerun with --force {art.stage}"
        )
    return StageOutput(
        table.column("output").combine_chunks(),
        reused=sorted(done & {b[0] for b in blocks}),
        computed=[b[0] for b in todo],
    )


def llm_table_compute(
    name: str, rows: pa.Table, key: str, text: str, out: str, op: Op, llm_cfg: LLMConfig, block_size: int, **options
) -> Callable[[Artifact], dict]:
    """The ``compute`` that ``ArtifactStore.run`` calls for the generate, score and embed stages:
    ``rows[text]`` through :func:`run_llm_stage` (``options``: its ``params``, ``adapter_path``, ``encoder``),
    written as the table ``(key, out)``, with the block bookkeeping (:meth:`StageOutput.manifest`) in the
    artifact manifest."""

    def compute(art: Artifact) -> dict:
        texts = rows.column(text).combine_chunks()
        res = run_llm_stage(art, texts, op=op, llm_cfg=llm_cfg, block_size=block_size, desc=name, **options)
        art.write_table(pa.table({key: rows.column(key), out: res.values}))
        return res.manifest()

    return compute


def _engine_spec(llm_cfg: LLMConfig) -> dict:
    """The parts of the LLM config that change outputs (not batch size, actors or devices).

    ``dtype`` and ``load_in_8bit`` enter only when set away from their defaults, so that the keys of
    artifacts computed before they were part of the spec stay valid. ``bfloat16`` enters as ``float32`` where
    the engine will run on a CPU without native bf16 (:func:`ragrec.runtime.engine_dtype` runs it in float32
    there), judged from this process: ``llm.device``, else a GPU per actor or none, else (``llm.actors: 0``)
    this machine's device; a cluster whose CPU workers differ from the driver in bf16 support should set
    ``llm.dtype`` explicitly.
    """
    from ..runtime import device, engine_dtype

    if llm_cfg.dtype == "bfloat16":
        if llm_cfg.device != "auto":
            where = llm_cfg.device
        elif llm_cfg.actors > 0:
            where = "cuda" if llm_cfg.num_gpus_per_actor > 0 else "cpu"
        else:
            where = device("auto")
        llm_cfg = llm_cfg.model_copy(update={"dtype": engine_dtype("bfloat16", where)})
    fields = ("model", "max_prompt_tokens", "dtype", "load_in_8bit")
    return spec_fields(llm_cfg, fields, late=("dtype", "load_in_8bit"))


def _digest(col: pa.ChunkedArray | pa.Array) -> str:
    """A short content hash of a text column, for the cache spec of a stage: its values (each length, -1 for
    null, then the bytes), the same however the column is chunked or sliced (a slice's Arrow buffers are its
    parent's, so hashing buffers gave two slices of one column the same digest)."""
    import hashlib

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    lengths = pa.compute.binary_length(arr).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    h = hashlib.sha256(lengths.tobytes())
    if arr.null_count:
        arr = arr.fill_null("")  # fresh buffers: a null slot's bytes are not part of the value
    if len(arr):
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_string(arr.type) else np.int32)
        offsets = offsets[arr.offset : arr.offset + len(arr) + 1]
        data = arr.buffers()[2]
        if data is not None:
            h.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
    return h.hexdigest()[:16]


def _block_tables(texts: pa.Array, todo: list[tuple[int, int, int]]) -> list[pa.Table]:
    return [
        pa.table(
            {
                "row": pa.array(np.arange(s, e), pa.int64()),
                "block": pa.array(np.full(e - s, b), pa.int64()),
                "text": texts.slice(s, e - s),
            }
        )
        for b, s, e in todo
    ]


def _run_actor_pool(art, texts, todo, *, op, llm_cfg, params, adapter_path, encoder, desc) -> None:
    import ray

    ds = ray.data.from_arrow(_block_tables(texts, todo))
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    ds = ds.map_batches(
        LLMWorker,
        fn_constructor_kwargs=dict(
            op=op,
            llm_cfg=llm_cfg.model_dump(),
            params=params,
            adapter_path=adapter_path,
            encoder=encoder,
            threads=actor_threads(cpus, llm_cfg.actors) if llm_cfg.num_gpus_per_actor == 0 else None,
        ),
        batch_size=None,  # one checkpoint block = one Ray block = one call
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=llm_cfg.actors),
        num_cpus=1,
        num_gpus=llm_cfg.num_gpus_per_actor or None,
    )
    _collect(art, ds.iter_batches(batch_size=None, batch_format="pyarrow"), todo, desc)


def _collect(art: Artifact, batches, todo, desc: str) -> None:
    """Group streamed rows by block and write each block the moment it is complete."""
    from tqdm.auto import tqdm

    expected = {b: e - s for b, s, e in todo}
    pending: dict[int, list[pa.Table]] = {}
    written, kill_after = 0, int(os.environ.get("RAGREC_FAULT_KILL_AFTER_BLOCKS", "0"))
    t0 = last_log = time.perf_counter()
    with tqdm(total=sum(expected.values()), desc=desc, unit="row", disable=not sys.stderr.isatty()) as bar:
        for batch in batches:
            for b in np.unique(batch.column("block").to_numpy()):
                part = batch.filter(pa.compute.equal(batch.column("block"), b))
                pending.setdefault(int(b), []).append(part)
                bar.update(part.num_rows)
                if sum(t.num_rows for t in pending[int(b)]) == expected[int(b)]:
                    art.write_block(int(b), pa.concat_tables(pending.pop(int(b))))
                    written += 1
                    if bar.disable and time.perf_counter() - last_log > 30:  # no tty: progress in the log
                        last_log = time.perf_counter()
                        log.info("%s: %d/%d blocks (%.0fs)", desc, written, len(todo), last_log - t0)
                    if kill_after and written >= kill_after:  # fault injection for the resume test
                        os.kill(os.getpid(), signal.SIGKILL)
    if pending:
        raise RuntimeError(f"stage {art.stage}: blocks {sorted(pending)} came back incomplete")
    log.info("%s: %d blocks in %.1fs", desc, len(todo), time.perf_counter() - t0)


def _run_vllm(art, texts, todo, *, op, llm_cfg, params, adapter_path=None) -> None:
    """GPU path: the same blocks through ``ray.data.llm`` processors (vLLM seeds each request)."""
    import ray

    from ..llm import vllm_engine

    ds = ray.data.from_arrow(_block_tables(texts, todo))
    if op == "generate":
        from ..llm.engine import Sampling

        sampling = vllm_engine.generation_sampling(Sampling.from_params(params))
        processor, column, typ = (
            vllm_engine.build_generation_processor(llm_cfg, sampling),
            vllm_engine.GENERATED_COLUMN,
            pa.string(),
        )
    elif op == "score":
        processor, column, typ = (
            vllm_engine.build_scoring_processor(llm_cfg, adapter_path=adapter_path),
            vllm_engine.SCORE_COLUMN,
            pa.float32(),
        )
    else:
        raise NotImplementedError(
            "embedding with the vllm engine: set embedding.model to a sentence encoder "
            "(e.g. minilm-l6) or use llm.engine=hf for the embedding stages"
        )
    out = processor(ds).select_columns(["row", "block", column])
    batches = (
        pa.table({"row": b.column("row"), "block": b.column("block"), "output": b.column(column).cast(typ)})
        for b in out.iter_batches(batch_size=None, batch_format="pyarrow")
    )
    _collect(art, batches, todo, f"{art.stage} (vllm)")
