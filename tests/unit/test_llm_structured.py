"""Labelled-line answers by construction (``ragrec.llm.structured``): the processor alone against a scripted
"model" that wants to break the format, then through HFEngine.generate on tiny-random-llama, whose random
weights never follow any format by themselves."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ragrec.config import LLMConfig
from ragrec.llm.engine import Sampling
from ragrec.llm.hf_engine import HFEngine
from ragrec.llm.prompts_er2alm import ASPECT_LABELS, PICK_LABELS, parse_aspects, parse_picks
from ragrec.llm.registry import TINY_LLAMA, load_tokenizer
from ragrec.llm.structured import FORMAT_VERSION, LabelledLines, labelled_lines_regex, line_budget

LABELS = list(ASPECT_LABELS.values())


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY_LLAMA)


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine(LLMConfig(model=TINY_LLAMA, batch_size=3, max_prompt_tokens=256))


def _run(proc: LabelledLines, wants, steps: int, batch: int, vocab: int, filler: int) -> list[list[int]]:
    """Greedy decoding of a scripted model: ``wants(row, step)`` is the token it would pick, ``filler`` its
    second choice."""
    seqs: list[list[int]] = [[0] for _ in range(batch)]  # a one-token "prompt"
    for step in range(steps):
        scores = torch.zeros(batch, vocab)
        scores[:, filler] = 5.0
        for r in range(batch):
            scores[r, wants(r, step)] = 10.0
        out = proc(torch.tensor(seqs), scores)
        assert torch.isfinite(out).any(1).all(), "a row with no allowed token"
        for r in range(batch):
            seqs[r].append(int(out[r].argmax()))
    return [s[1:] for s in seqs]


def test_a_model_that_only_wants_eos_or_line_breaks_still_writes_every_labelled_line(tok):
    vocab = len(tok)
    nl = tok.encode("\n", add_special_tokens=False)[-1]
    word = tok.encode(" drama", add_special_tokens=False)[0]
    budget = 3
    proc = LabelledLines(tok, LABELS, budget, vocab)
    # row 0 wants EOS always, row 1 a line break always, row 2 one word forever (never a line break)
    wants = [lambda s: tok.eos_token_id, lambda s: nl, lambda s: word]
    steps = sum(LabelledLines.label_token_counts(tok, LABELS)) + len(LABELS) * (budget + 1) + 1
    filler = tok.encode(" story", add_special_tokens=False)[0]
    seqs = _run(proc, lambda r, s: wants[r](s), steps, 3, vocab, filler)
    eos = tok.eos_token_id
    assert all(eos in seq for seq in seqs)  # every row ended within the budget
    seqs = [seq[: seq.index(eos)] for seq in seqs]  # generate stops a row at its EOS
    for r, seq in enumerate(seqs):
        text = tok.decode(seq).strip()  # the engine strips the last line break
        lines = text.split("\n")
        assert [ln.split(":")[0] for ln in lines] == LABELS, (r, text)
        values = [ln.split(":", 1)[1] for ln in lines]
        assert all(v.strip() for v in values), (r, text)  # the first free token may not end the line
        free = [len(tok.encode(v, add_special_tokens=False)) for v in values]
        assert max(free) <= budget  # a line at its budget is ended by a forced line break
    # the row that wants one word forever writes exactly `budget` of it per line
    assert tok.decode(seqs[2]).count("drama") == budget * len(LABELS)
    # the row that wants line breaks gets them right after its one (forced non-break) value token
    assert parse_aspects([tok.decode(seqs[1])])[1]["parsed"] == 1


def test_a_blank_token_does_not_open_the_line_break(tok):
    """A model that writes a space, then wants the line break (SmolLM2-135M's ``plot/theme: \\n``, 5 of 1,682
    ML-100K aspect answers under format version 1) must write a real token first: no blank value."""
    vocab = len(tok)
    nl = tok.encode("\n", add_special_tokens=False)[-1]
    (space,) = [i for i in range(vocab) if tok.decode([i]) == " "][:1]
    filler = tok.encode(" story", add_special_tokens=False)[0]
    proc = LabelledLines(tok, LABELS, 4, vocab)
    steps = sum(LabelledLines.label_token_counts(tok, LABELS)) + len(LABELS) * 5 + 1
    # row 0: a space whenever the last token was not one, then a line break; row 1: a space only
    seqs = _run(proc, lambda r, s: nl if r == 0 and s % 2 else space, steps, 2, vocab, filler)
    for seq in seqs:
        text = tok.decode(seq[: seq.index(tok.eos_token_id)]).strip()
        values = [ln.split(":", 1)[1] for ln in text.split("\n")]
        assert len(values) == len(LABELS) and all(v.strip() for v in values), text


def test_budget_fits_the_labels_in_the_token_limit_or_names_the_fix(tok):
    counts = LabelledLines.label_token_counts(tok, LABELS)
    b = line_budget(120, counts)
    assert sum(counts) + len(LABELS) * (b + 1) + 1 <= 120 < sum(counts) + len(LABELS) * (b + 2) + 1
    with pytest.raises(ValueError, match=r"max_new_tokens=10 .* raise it to at least"):
        line_budget(10, counts)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_answers_parse_completely_even_from_random_weights(engine, temperature):
    prompts = ["Describe Toy Story.", "x", "Write the six aspects of Heat (1995), a crime film with a long prompt."]
    kw = dict(max_new_tokens=60, temperature=temperature, top_p=0.9, seed=3)
    free = engine.generate(prompts, Sampling(**kw))
    assert parse_aspects(free)[1]["parsed"] == 0  # random weights: no format without forcing
    out = engine.generate(prompts, Sampling(**kw, line_labels=tuple(LABELS)))
    assert parse_aspects(out)[1]["parsed"] == len(prompts), out
    assert all(len(engine.tokenizer.encode(o, add_special_tokens=False)) <= 60 for o in out)


def test_state_is_per_row_a_prompt_answers_the_same_alone_and_in_a_batch(engine):
    prompts = ["Describe Toy Story.", "x", "A longer prompt about crime films and their directors."]
    s = Sampling(48, line_labels=tuple(LABELS))
    batched = engine.generate(prompts, s)
    alone = [engine.generate([p], s)[0] for p in prompts]
    assert batched == alone


def test_number_values_make_every_pick_a_candidate_number(engine):
    """Picks (``line_values="number"``, ``line_max`` = the candidates): each value is a number in range, so even
    random weights give a usable pick; labels alone do not."""
    prompts = ["Pick a movie.", "x", "Which of the ten candidates will the user like and which not?"] * 3
    kw = dict(max_new_tokens=12, temperature=1.0, seed=1, line_labels=PICK_LABELS)
    free_text = engine.generate(prompts, Sampling(**kw))
    for c in (3, 12):
        numbers = engine.generate(prompts, Sampling(**kw, line_values="number", line_max=c))
        for o in numbers:
            lines = o.split("\n")
            assert [ln.split(":")[0] for ln in lines] == list(PICK_LABELS)
            values = [ln.split(":", 1)[1].strip() for ln in lines]
            assert all(v.isdigit() and 1 <= int(v) <= c for v in values), o
        stats = parse_picks(numbers, n_candidates=c)[2]
        assert stats["missing_liked"] == stats["out_of_range"] == 0
    assert parse_picks(free_text, n_candidates=12)[2]["missing_liked"] > 0  # labels alone are not enough


def test_a_number_grows_digit_by_digit_only_while_it_stays_in_range(tok):
    """A scripted model that wants ``0`` then ``9`` forever: the value cannot start with 0, and a second digit
    is allowed only while the number stays <= max_value (here 12: "1" may grow to "10".."12", "9" may not)."""
    vocab = len(tok)
    ids = {d: tok.encode(d, add_special_tokens=False)[-1] for d in "0129"}
    proc = LabelledLines(tok, ["liked"], 4, vocab, values="number", max_value=12)
    n_label = LabelledLines.label_token_counts(tok, ["liked"])[0]
    seqs = [[0], [0]]
    wants = [[ids["0"], ids["9"], ids["9"]], [ids["1"], ids["9"], ids["2"]]]  # first choices per free step
    for step in range(n_label + 4):
        scores = torch.zeros(2, vocab)
        for r in range(2):
            k = max(step - n_label, 0)
            if k < 3:
                scores[r, wants[r][k]] = 10.0
            scores[r, ids["2"]] = max(scores[r, ids["2"]].item(), 1.0)  # the runner-up
        out = proc(torch.tensor(seqs), scores)
        for r in range(2):
            seqs[r].append(int(out[r].argmax()))
    texts = [tok.decode(s[1:]) for s in seqs]
    # row 0: "0" refused -> the runner-up "2"; then "9" would give 29 > 12 -> line break, EOS
    assert texts[0].startswith("liked:2\n"), texts[0]
    # row 1: "1", then "9" (19 > 12) refused -> runner-up "2" (12); then nothing keeps it <= 12 -> line break
    assert texts[1].startswith("liked:12\n"), texts[1]


def test_er2alm_stages_check_the_label_budget_before_any_llm_starts():
    from ragrec.config import load_config
    from ragrec.stages.er2alm import _labels

    cfg = load_config("configs/er2alm_ml100k_slice.yaml", ["profile.max_new_tokens=12"])
    with pytest.raises(
        ValueError, match=r"^profile\.max_new_tokens: .*raise it to at least \d+ \(or set profile\.force_format"
    ):
        _labels(cfg, "profile", ASPECT_LABELS.values())
    fmt = {"line_format": FORMAT_VERSION}  # the processor's version: answers of another one are not reused
    assert _labels(cfg, "augment", PICK_LABELS, "number") == {
        "line_labels": list(PICK_LABELS),
        "line_values": "number",
        **fmt,
    }
    assert _labels(cfg, "rag", ASPECT_LABELS.values()) == {"line_labels": LABELS, **fmt}
    weighted = _labels(
        cfg.model_copy(update={"profile": cfg.profile.model_copy(update={"max_new_tokens": 200})}),
        "profile",
        ASPECT_LABELS.values(),
        "weighted",
    )
    assert weighted == {"line_labels": LABELS, "line_values": "weighted", **fmt}
    off = load_config("configs/er2alm_ml100k_slice.yaml", ["profile.max_new_tokens=12", "profile.force_format=false"])
    assert _labels(off, "profile", ASPECT_LABELS.values()) == {}  # free text: the stage's cache key is unchanged


def test_regex_accepts_the_forced_shape_and_nothing_else():
    import re

    rx = re.compile(labelled_lines_regex(["liked", "disliked"], max_line_chars=20))
    assert rx.fullmatch("liked: 3\ndisliked: 7") and rx.fullmatch("liked: the one\ndisliked: 7")
    num = re.compile(labelled_lines_regex(["liked", "disliked"], values="number"))
    assert num.fullmatch("liked: 3\ndisliked:12") and not num.fullmatch("liked: the one\ndisliked: 7")
    assert not rx.fullmatch("disliked: 7\nliked: 3")
    assert not rx.fullmatch("liked:\ndisliked: 7")  # empty value
    assert not rx.fullmatch("liked: \ndisliked: 7") and not rx.fullmatch("liked:\t \ndisliked: 7")  # blank
    assert not rx.fullmatch("liked: 3")
    w = re.compile(labelled_lines_regex(["genre", "director"], values="weighted"))
    assert w.fullmatch("genre: crime [weight: 0.7]\ndirector: Hitchcock, Lang [weight: 0.35]")
    assert not w.fullmatch("genre: crime [weight: 0.07]\ndirector: x [weight: 0.3]")  # no leading zero digit
    assert not w.fullmatch("genre: crime\ndirector: x [weight: 0.3]")  # every line has its weight


def test_newline_mask_marks_exactly_the_tokens_with_a_line_break(tok):
    from ragrec.llm.structured import newline_token_mask

    mask = newline_token_mask(tok, len(tok)).numpy()
    ids = np.flatnonzero(mask)
    assert tok.encode("\n", add_special_tokens=False)[-1] in ids
    sample = np.random.default_rng(0).choice(len(tok), 300, replace=False)
    for i in sample:
        assert mask[i] == ("\n" in tok.decode([int(i)]))


def test_a_generation_stage_block_hands_its_sampling_to_the_engine(monkeypatch):
    """The actor turns the stage's cache-key ``sampling`` dict into one :class:`Sampling` per checkpoint block:
    the labels and value kind travel, and the seed is the stage seed plus the block index."""
    import pyarrow as pa

    import ragrec.llm as llm
    from ragrec.stages.base import LLMWorker

    seen = []

    class Fake:
        def generate(self, prompts, sampling):
            seen.append(sampling)
            return [f"{p}!" for p in prompts]

    monkeypatch.setattr(llm, "load_engine", lambda cfg, adapter_path=None: Fake())
    params = {"max_new_tokens": 12, "temperature": 0.5, "top_p": 0.9, "seed": 40, "line_labels": ["liked", "disliked"]}
    worker = LLMWorker("generate", {"model": TINY_LLAMA}, params | {"line_values": "number"}, threads=1)
    batch = pa.table({"row": [0, 1, 2], "block": [3, 3, 5], "text": ["a", "b", "c"]})
    out = worker(batch)
    assert out.column("output").to_pylist() == ["a!", "b!", "c!"]
    assert [s.seed for s in seen] == [43, 45]
    assert seen[0] == Sampling(12, 0.5, 0.9, 43, ("liked", "disliked"), "number")


def test_weighted_lines_end_with_the_models_expected_weight_where_it_wanted_a_line_break(tok):
    """``values="weighted"`` (ER2ALM profiles). Row 0 wants a line break right after its first word and, at a
    weight, the digit 7 (with some mass on 3); row 1 wants one word forever and has no preference among digits
    (its favourite, 0, is not a first digit); row 2 wants EOS. Every line is ``label:<text> [weight: 0.dd]``:
    the line break's probability opened the weight (row 0's lines have one word), the budget closed row 1's
    text, and the digits are round(10 E) of the expected first digit E under the model's scores."""
    from ragrec.llm.prompts_er2alm import parse_profiles

    vocab = len(tok)
    nl = tok.encode("\n", add_special_tokens=False)[-1]
    word, filler = (tok.encode(w, add_special_tokens=False)[0] for w in (" drama", " story"))
    d = [tok.encode(str(k), add_special_tokens=False)[-1] for k in range(10)]
    budget = 3
    proc = LabelledLines(tok, LABELS, budget, vocab, values="weighted")
    seqs: list[list[int]] = [[0] for _ in range(3)]
    steps = sum(LabelledLines.fixed_token_counts(tok, LABELS, "weighted")) + len(LABELS) * (budget + 1) + 1
    for _ in range(steps):
        scores = torch.zeros(3, vocab)
        scores[:, filler] = 5.0
        scores[0, nl] = 10.0  # row 0: end the line (its first token may not: the filler comes first)
        scores[0, d[7]], scores[0, d[3]] = 3.0, 2.0
        scores[1, word], scores[1, d[0]] = 11.0, 10.0
        scores[2, tok.eos_token_id] = 10.0
        out = proc(torch.tensor(seqs), scores)
        assert torch.isfinite(out).any(1).all(), "a row with no allowed token"
        for r in range(3):
            seqs[r].append(int(out[r].argmax()))
    texts = []
    for s in seqs:
        s = s[1:]
        assert tok.eos_token_id in s
        texts.append(tok.decode(s[: s.index(tok.eos_token_id)]).strip())
    for text in texts:
        lines = text.split("\n")
        assert [ln.split(":")[0] for ln in lines] == LABELS, text
        assert all(re.fullmatch(r".+ \[weight: 0\.[1-9][0-9]\]", ln) for ln in lines), text
    p0 = torch.softmax(torch.tensor([0.0] * 2 + [2.0] + [0.0] * 3 + [3.0] + [0.0] * 2), 0)  # digits 1..9
    e0 = float((p0 * torch.arange(1, 10)).sum())
    assert texts[0].split("\n")[0] == f"plot/theme: story [weight: 0.{round(10 * e0)}]"  # one word, then the weight
    assert texts[1].split("\n")[0] == "plot/theme: drama drama drama [weight: 0.50]"  # budget; flat digits: E = 5
    profiles, w, stats = parse_profiles(texts)
    assert stats["weight_missing"] == stats["uniform_rows"] == stats["weight_invalid"] == 0
    np.testing.assert_allclose(w[0], round(10 * e0) / 100) and np.testing.assert_allclose(w[1], 0.5)
    assert profiles.column("genre").to_pylist()[:2] == ["story", "drama drama drama"]


def test_engine_weighted_answers_always_give_every_aspect_a_weight(engine):
    from ragrec.llm.prompts_er2alm import parse_profiles

    prompts = ["Describe the user.", "x", "A longer prompt about a user who likes crime films and their directors."]
    kw = dict(max_new_tokens=120, temperature=1.0, top_p=0.9, seed=5, line_labels=tuple(LABELS))
    _, _, plain = parse_profiles(engine.generate(prompts, Sampling(**kw)))
    assert plain["uniform_rows"] == len(prompts)  # random weights write no weight by themselves
    out = engine.generate(prompts, Sampling(**kw, line_values="weighted"))
    assert all(len(engine.tokenizer.encode(o, add_special_tokens=False)) <= 120 for o in out)
    _, w, stats = parse_profiles(out)
    assert stats["parsed"] == len(prompts) and stats["weight_missing"] == stats["uniform_rows"] == 0, out
    assert np.all((w >= 0.1) & (w <= 0.95)) and len(np.unique(w)) > 1


def test_llm_worker_threads_come_from_ragrec_torch_threads_unless_given(monkeypatch):
    """``llm.actors: 0`` builds the worker without a thread count: RAGREC_TORCH_THREADS (as the training loops)
    sets it, so two 1-thread runs can share 2 cores; unset, every core; an explicit count wins."""
    import os

    import torch

    import ragrec.llm as llm
    from ragrec.stages.base import LLMWorker

    monkeypatch.setattr(llm, "load_engine", lambda cfg, adapter_path=None: object())
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("RAGREC_TORCH_THREADS", "1")
        LLMWorker("generate", {"model": TINY_LLAMA}, {"max_new_tokens": 1})
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("RAGREC_TORCH_THREADS")
        LLMWorker("generate", {"model": TINY_LLAMA}, {"max_new_tokens": 1})
        assert torch.get_num_threads() == (os.cpu_count() or 1)
        monkeypatch.setenv("RAGREC_TORCH_THREADS", "1")
        LLMWorker("generate", {"model": TINY_LLAMA}, {"max_new_tokens": 1}, threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cpu_actors_share_the_free_cores():
    from ragrec.stages.base import actor_threads

    assert [actor_threads(2, 1), actor_threads(2, 2), actor_threads(8, 3), actor_threads(1, 4)] == [2, 1, 2, 1]
