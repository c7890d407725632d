"""SCoRe's method wiring without models: variant configs, dispatch, clear errors."""

import json

import pytest

from ragrec.config import ConfigError, load_config
from ragrec.methods.common import load_run
from ragrec.methods.evaluation import variant_config
from ragrec.methods.score import Pipeline
from ragrec.methods.score_evaluate import FULL, VARIANTS


def test_variants_change_only_what_the_paper_ablates():
    base = load_config("configs/score_ml100k.yaml")
    got = {name: variant_config(base, v.overrides) for name, v in VARIANTS.items()}
    assert list(got) == list(base.eval.variants_for("score"))
    full = got["score"]
    assert (full.ci.retriever, full.sare.enabled, full.lora.enabled, full.ci.ks) == ("car", True, True, 2)
    assert got["score_base"].ci.retriever == "base" and got["score_base"].sare.enabled
    assert got["score_cf"].ci.retriever == "cf" and got["score_cf"].sare.enabled
    assert got["score_rerank"].ci.retriever == "car" and not got["score_rerank"].sare.enabled
    assert got["no_ci"].ci.ks == 0 and got["no_ci"].lora.enabled
    assert got["zero_shot"].ci.ks == 0 and not got["zero_shot"].lora.enabled
    for cfg in got.values():  # everything else is the base config
        assert (
            cfg.sasrec == base.sasrec
            and cfg.car.model_dump(exclude={"enabled"}) == base.car.model_dump(exclude={"enabled"})
            and cfg.lora.r == 8
            and cfg.lora.alpha == 32
        )
    assert set(FULL) == {"ci.retriever", "sare.enabled", "lora.enabled"}


def test_score_config_has_the_paper_defaults():
    cfg = load_config("configs/score_ml100k.yaml")
    assert (cfg.car.kc, cfg.car.temperature, cfg.ci.ke, cfg.ci.ks) == (5, 0.1, 10, 2)
    assert (cfg.sare.k1, cfg.sare.k2, cfg.sare.temperature) == (5, 3, 0.02)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 32, 0.1)
    assert set(cfg.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert cfg.data.protocol == "temporal" and cfg.data.temporal.unit == "month"


def test_variant_lists_are_checked_per_method():
    cfg = load_config("configs/score_ml100k.yaml", ["eval.variants=[score,rella]"])
    with pytest.raises(ValueError, match=r"\['rella'\] do not apply to method 'score'"):
        cfg.eval.variants_for("score")
    with pytest.raises(ConfigError, match="unknown eval variants"):
        load_config("configs/score_ml100k.yaml", ["eval.variants=[nope]"])


def test_pipeline_and_serving_refuse_the_wrong_method(tmp_path):
    with pytest.raises(ValueError, match="method: score"):
        Pipeline(load_config("configs/rallrec_ml100k.yaml"))
    payload = {"method": "score", "config": {}, "artifacts_dir": str(tmp_path / "a"), "artifacts": {}}
    (tmp_path / "run.json").write_text(json.dumps(payload))
    assert load_run(tmp_path).method == "score"  # any method's run opens
    from ragrec.serving.state import load_state

    with pytest.raises(ValueError, match="serving a SCoRe run is not supported yet: .*Serve a RALLRec run"):
        load_state(tmp_path)


def test_rationale_pairs_are_seeded_training_samples_of_users_with_documents():
    import numpy as np
    import pyarrow as pa

    from ragrec.methods.score import _by_sample_id, rationale_pairs

    n = 40
    samples = pa.table(
        {
            "sample_id": pa.array(np.arange(n), pa.int64()),
            "user_id": pa.array(np.arange(n) % 4, pa.int64()),
            "split": ["train"] * 30 + ["test"] * 10,
        }
    )
    valid = np.array([True, False, True, True])
    a = rationale_pairs(samples, 12, seed=1, valid=valid)
    b = rationale_pairs(samples, 12, seed=1, valid=valid)
    assert a.equals(b) and a.num_rows == 12
    assert set(a.column("split").to_pylist()) == {"train"} and 1 not in a.column("user_id").to_pylist()
    assert a.column("sample_id").to_pylist() == sorted(a.column("sample_id").to_pylist())
    assert rationale_pairs(samples, 1000, seed=1, valid=valid).num_rows == 30 - 8  # all valid training samples
    with pytest.raises(ValueError, match="no training sample belongs to a user with liked training items"):
        rationale_pairs(samples, 5, seed=1, valid=np.zeros(4, bool))
    picked = _by_sample_id(samples, pa.array([7, 3, 29]))
    assert picked.column("sample_id").to_pylist() == [7, 3, 29]
