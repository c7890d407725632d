from pathlib import Path

import pytest

from ragrec.config import ConfigError, RunConfig, apply_overrides, config_hash, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_paper_values():
    cfg = RunConfig()
    assert cfg.retrieval.k == 30 and cfg.retrieval.beta == 1.0
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.lr) == (8, 16, 0.05, 5e-4)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.lora.train_samples == 8192
    assert (cfg.description.temperature, cfg.description.top_p) == (0.8, 0.9)
    assert cfg.embedding.pca_dim == 128 and cfg.data.split == (0.8, 0.1, 0.1)


def test_overrides_parse_yaml_scalars_and_nest():
    out = apply_overrides({"retrieval": {"k": 30}}, ["retrieval.k=20", "lora.target_modules=[q_proj]", "name=x"])
    assert out == {"retrieval": {"k": 20}, "lora": {"target_modules": ["q_proj"]}, "name": "x"}


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("sweep"))
)
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.name


def test_unknown_field_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("retrieval:\n  kk: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*\n.*retrieval\.kk"):
        load_config(p)


def test_bad_value_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="retrieval.alpha"):
        load_config(None, ["retrieval.alpha=1.5"])
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["retrieval.alpha"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="split"):
        load_config(None, ["data.split=[0.5,0.5,0.5]"])


@pytest.mark.parametrize("value", ["[1", "{a: 1", "'open", "a: b: c"])
def test_an_override_that_is_not_yaml_is_a_config_error_naming_it(value, capsys):
    from ragrec.cli import main

    with pytest.raises(ConfigError, match=r"override 'retrieval\.k=.*': the value is not valid YAML.*quote"):
        load_config(None, [f"retrieval.k={value}"])
    # the CLI prints one line and exits 2, no traceback
    assert main(["config", "show", str(REPO / "configs/rallrec_ml100k.yaml"), "--set", f"retrieval.k={value}"]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "Traceback" not in err


def test_config_hash_is_stable_and_sensitive():
    a, b = RunConfig(), RunConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load_config(None, ["retrieval.k=5"]))


def test_data_path_needs_data_dir(monkeypatch):
    monkeypatch.delenv("RAGREC_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="RAGREC_DATA_DIR"):
        RunConfig().data.resolved_path()
    monkeypatch.setenv("RAGREC_DATA_DIR", "/x")
    assert str(RunConfig().data.resolved_path()) == "/x/ml-100k"
