"""Manifests keep what reproduces a run and drop what looks like a secret."""

import json

from srt.pipeline.manifest import scrub, write_manifest


def test_scrub_redacts_secrets_and_keeps_settings():
    config = {
        "generation": {"response": {"max_new_tokens": 96, "temperature": 0.7}, "critique": {"max_new_tokens": 192}},
        "critic": {
            "name": "openai",
            "api_key_env": "OPENAI_API_KEY",
            "api_key": "sk-abc",
            "headers": {"Authorization": "Bearer sk-abc"},
            "options": {"hf_token": "hf_xyz"},
        },
        "hub": {"token": "hf_xyz", "secrets": {"a": "hf_xyz"}},
        "sft": {"max_length": 512, "truncation": "drop"},
    }
    out = scrub(config)
    assert out["generation"]["response"]["max_new_tokens"] == 96
    assert out["generation"]["critique"]["max_new_tokens"] == 192
    assert out["critic"]["api_key_env"] == "OPENAI_API_KEY"
    assert out["sft"] == config["sft"]
    text = json.dumps(out)
    assert "sk-abc" not in text and "hf_xyz" not in text
    assert out["critic"]["api_key"] == "<redacted>" and out["hub"]["token"] == "<redacted>"


def test_manifest_records_generation_lengths(tmp_path):
    path = write_manifest(tmp_path, config={"generation": {"response": {"max_new_tokens": 96}}}, seed=3)
    manifest = json.loads(path.read_text())
    assert manifest["config"]["generation"]["response"]["max_new_tokens"] == 96
    assert manifest["seed"] == 3
