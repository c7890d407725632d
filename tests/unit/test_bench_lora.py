"""benchmarks/bench_lora.py in --quick mode (tiny-random-llama): both loops train the same thing.

Speed is not asserted (a 2-layer model is all overhead); what is: the two adapters end at the same loss on
the examples, the rows count the same examples, and the check catches a real difference.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import bench_lora as B


def test_lora_quick_trains_to_the_reference_loss_and_the_check_catches_a_difference():
    c = B.compare(quick=True)
    assert c.n == B.QUICK_EXAMPLES and c.tokens > 0
    assert abs(c.ref_tokens - c.tokens) <= 0.02 * c.tokens  # the same real tokens on both sides
    r = B.to_result(c, quick=True)
    assert r.verified, r.notes
    assert r.ragrec.units == r.reference.units == c.n
    assert "tokens/s" in r.details and "fraction of matmul peak" in r.details
    worse = B.to_result(dataclasses.replace(c, loss=c.ref_loss * 1.5), quick=True)
    assert not worse.verified and worse.notes


def test_examples_are_training_samples_with_yes_no_answers():
    table, source = B.ctr_examples(8, quick=True)
    assert table.num_rows == 8 and "training samples" in source
    assert set(table.column("answer").to_pylist()) <= {"Yes.", "No."}
    assert all("deduce if" in p for p in table.column("prompt").to_pylist())
