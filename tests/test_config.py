"""Config loading: validation with clear messages, dotted overrides, secrets refused."""

import pytest

from srt.config import RunConfig, apply_overrides, config_hash, load_config
from srt.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_the_paper():
    cfg = RunConfig()
    assert cfg.dpo.beta == 0.01 and cfg.dpo.loss_type == "sigmoid"
    assert cfg.sft.epochs == 5 and cfg.sft.global_batch_size == 32 and cfg.sft.optim.lr == 1e-5
    assert cfg.sft.optim.warmup_ratio == 0.1 and cfg.dpo.optim.lr == 5e-7
    assert cfg.generation.response.temperature == 0.7 and cfg.generation.critique.temperature == 0.0
    assert cfg.stage2.refinement_vs_response == ">" and cfg.filter.refinement_vs_response == ">="


def test_overrides_are_typed_and_nested(tmp_path):
    p = write(tmp_path, "sft:\n  epochs: 3\ncritic:\n  name: hf\n  model: tiny\n")
    cfg = load_config(
        p, ["sft.epochs=2", "sft.optim.lr=0.001", "sft.lora.r=8", "trainer.devices=2", "critic.max_new_tokens=64"]
    )
    assert cfg.sft.epochs == 2 and cfg.sft.optim.lr == 0.001
    assert cfg.sft.lora is not None and cfg.sft.lora.r == 8
    assert cfg.trainer.devices == 2 and cfg.critic == {"name": "hf", "model": "tiny", "max_new_tokens": 64}


@pytest.mark.parametrize(
    "text,overrides,expected",
    [
        ("sft:\n  epoch: 2\n", [], "sft.epoch: unknown key"),
        ("sft:\n  optim:\n    lr: -1\n", [], "sft.optim.lr: Input should be greater than 0"),
        ("dpo:\n  loss_type: kto\n", [], "dpo.loss_type"),
        ("critic:\n  model: x\n", [], "critic needs a 'name'"),
        ("sft: [1, 2\n", [], "invalid YAML"),
        ("- a\n- b\n", [], "mapping at the top level"),
        ("", ["sft.epochs"], "must look like key.subkey=value"),
        ("", ["sft.epochs=2", "sft.epochs.x=1"], "'epochs' is not a section"),
        ("dpo:\n  reference: adapter_disabled\n", [], "needs dpo.lora"),
    ],
)
def test_mistakes_give_one_clear_line(tmp_path, text, overrides, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p, overrides)
    msg = str(exc.value)
    assert expected in msg and "\n" not in msg


def test_secrets_are_refused(tmp_path):
    p = write(tmp_path, "critic:\n  name: openai\n  api_key: sk-very-secret\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "critic.api_key" in str(exc.value) and "sk-very-secret" not in str(exc.value)
    assert "api_key_env" in str(exc.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.yaml")


def test_config_hash_is_stable_and_sensitive():
    a, b = RunConfig(), RunConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(RunConfig.model_validate(apply_overrides({}, ["seed=1"]))) != config_hash(a)
