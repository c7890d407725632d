"""Long-prompt generation on CPU: chunked prefill vs reading each batch's prompts in one forward.

    python benchmarks/bench_prefill.py [--quick] [--prompts N] [--tokens L] [--max-new-tokens T]
                                       [--batch-size B] [--threads T]

What ER2ALM's aspect and profile stages do: a few hundred to 1,500 prompt tokens, then 16-200 new tokens.
Inputs: N prompts of about L tokens (item titles and genres of MovieLens-100K from ``$RAGREC_DATA_DIR``, else
the synthetic catalog, cut to lengths from L/2 to L), SmolLM2-135M-Instruct in bfloat16 (``--quick``:
tiny-random-llama in float32), greedy decoding of T tokens, the same model weights on both sides.

* ragrec: ``HFEngine`` with ``llm.batch_size`` B (default 16) and the default ``llm.prefill_tokens`` (4,096 on
  CPU): each batch's KV cache is filled in row chunks, then the batch decodes together. (B = 64 measured 0.8x:
  larger decoding batches do not pay here.)
* reference: ``HFEngine`` as it was before chunked prefill: batches of 16 read whole (``prefill_tokens``
  unlimited), then decoded.

Outputs: the fraction of prompts whose text is identical. Both decode greedily; different batch shapes sum in
a different order, so in bfloat16 a text may leave the other's path at a near tie. At least ``MIN_IDENTICAL``
must match for the ratio to count. Time it alone: another torch job on the same cores distorts both sides.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_scoring import bench_data
from benchmarks.common import Measurement, Result, machine, parse_args, report, timed
from ragrec.config import LLMConfig, SyntheticConfig

BENCH = "prefill"
MIN_IDENTICAL = 0.7
FULL = {"prompts": 64, "tokens": 1200, "new": 32, "model": "smollm2-135m-instruct", "dtype": "bfloat16"}
QUICK = {"prompts": 8, "tokens": 200, "new": 4, "model": "tiny-random-llama", "dtype": "float32"}
QUICK_DATA = SyntheticConfig(n_users=20, n_items=60, ratings_per_user=10)
REFERENCE_BATCH = 16


def long_prompts(n: int, tokens: int, quick: bool, tokenizer) -> tuple[list[str], str]:
    """``n`` prompts of ``tokens / 2`` .. ``tokens`` tokens: a user's history-like list of catalog items."""
    from ragrec.data import load_dataset

    cfg, source = bench_data(quick, QUICK_DATA, lambda shape: f"{shape.n_items} items")
    items = load_dataset(cfg).items
    titles = [f"{t} ({g})" for t, g in zip(items.column("title").to_pylist(), items.column("genres").to_pylist())]
    prompts = []
    for p in range(n):
        want = tokens // 2 + (tokens // 2) * p // max(n - 1, 1)
        text, j = "The user rated these movies highly: ", p * 7
        while len(tokenizer(text)["input_ids"]) < want:
            text += titles[j % len(titles)] + "; "
            j += 1
        prompts.append(text + "\nDescribe what this user likes in one sentence.")
    return prompts, f"{source}: {n} prompts of {tokens // 2}-{tokens} tokens"


def run(quick: bool, n: int | None, tokens: int | None, new: int | None, batch: int, threads: int | None) -> Result:
    import torch

    from ragrec.llm.engine import Sampling
    from ragrec.llm.hf_engine import HFEngine

    if threads:
        torch.set_num_threads(threads)
    shape = QUICK if quick else FULL
    n, tokens, new = n or shape["prompts"], tokens or shape["tokens"], new or shape["new"]
    common = dict(model=shape["model"], dtype=shape["dtype"], device="cpu", max_prompt_tokens=4 * tokens)
    ours = HFEngine(LLMConfig(batch_size=batch, **common))
    ref = HFEngine(LLMConfig(batch_size=REFERENCE_BATCH, prefill_tokens=10**9, **common))
    ref.model = ours.model  # the same weights
    prompts, source = long_prompts(n, tokens, quick, ours.tokenizer)
    greedy = Sampling(max_new_tokens=new)
    ours.generate(prompts[:2], Sampling(max_new_tokens=2))  # warm-up
    ref_out, ref_t = timed(lambda: ref.generate(prompts, greedy))
    our_out, our_t = timed(lambda: ours.generate(prompts, greedy))
    same = sum(a == b for a, b in zip(our_out, ref_out)) / n
    return Result(
        bench=BENCH,
        case=f"{n} prompts ≤{tokens} tok, {new} new, batch {batch} vs {REFERENCE_BATCH}",
        unit="prompts",
        reference=Measurement.of(f"whole-batch prefill, batch {REFERENCE_BATCH}", n, ref_t),
        ragrec=Measurement.of(f"chunked prefill ({ours.chunk_rows(tokens, batch)} rows), batch {batch}", n, our_t),
        verified=same >= MIN_IDENTICAL,
        details={
            "inputs": source,
            "model": f"{shape['model']} {shape['dtype']}, {torch.get_num_threads()} threads",
            "outputs": f"{same:.0%} of texts identical (greedy)",
            "machine": machine(),
        },
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--prompts": {"type": int, "default": None, "help": f"prompts (default {FULL['prompts']})"},
            "--tokens": {"type": int, "default": None, "help": f"longest prompt (default {FULL['tokens']})"},
            "--max-new-tokens": {"type": int, "default": None, "help": f"default {FULL['new']}"},
            "--batch-size": {"type": int, "default": 16, "help": "ragrec's llm.batch_size (default %(default)s)"},
            "--threads": {"type": int, "default": None, "help": "torch threads (default: torch's)"},
        },
    )
    r = run(args.quick, args.prompts, args.tokens, args.max_new_tokens, args.batch_size, args.threads)
    print(f"{r.case}: {r.ratio:.2f}x the reference prompts/s; {r.details['outputs']}")
    report([r], args)


if __name__ == "__main__":
    main()
