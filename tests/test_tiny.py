"""The tiny test model: tokenizer, chat template, model, save/reload, LoRA."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from srt.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_model

CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
]


def test_tokenizer_is_deterministic_and_small():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert 512 <= len(a) <= 1000


def test_round_trip_multibyte_text(tiny_tokenizer):
    for text in [
        "Hello, world!",
        "你好，世界 and 日本語",
        "emoji 😀🚀 ✨ mixed",
        "  spaces\n\ttabs ",
        "### Feedback\nOverall Score: [[7]]",
    ]:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text
        assert tiny_tokenizer.unk_token_id not in ids


def test_special_tokens_pad_differs_from_eos(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id is not None
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.bos_token_id not in (tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id)
    assert tiny_tokenizer.model_input_names == ["input_ids", "attention_mask"]
    for role in ("<|user|>", "<|assistant|>", "<|system|>"):
        assert len(tiny_tokenizer(role, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_renders_exactly_one_bos(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text.startswith("<s>") and text.count("<s>") == 1
    # Both ways of tokenizing the rendered text give one BOS: the tokenizer adds none itself.
    for add_special in (True, False):
        ids = tiny_tokenizer(text, add_special_tokens=add_special)["input_ids"]
        assert ids.count(tiny_tokenizer.bos_token_id) == 1 and ids[0] == tiny_tokenizer.bos_token_id
    ids = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    assert ids.count(tiny_tokenizer.bos_token_id) == 1


def test_assistant_turn_ends_with_eos_and_generation_prompt(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert "<|assistant|>\n4</s>\n" in text
    prompt = tiny_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    assert text.startswith(prompt)  # the generation prompt is a prefix of the full conversation


def test_model_size_and_determinism():
    tokenizer = build_tiny_tokenizer()
    m1, m2, m3 = build_tiny_model(tokenizer, 0), build_tiny_model(tokenizer, 0), build_tiny_model(tokenizer, 1)
    n_params = sum(p.numel() for p in m1.parameters())
    assert 50_000 < n_params < 250_000
    w1, w2, w3 = (m.model.embed_tokens.weight for m in (m1, m2, m3))
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)
    assert m1.config.pad_token_id == tokenizer.pad_token_id and m1.config.eos_token_id == tokenizer.eos_token_id


def test_forward_backward(tiny_model, tiny_tokenizer):
    batch = tiny_tokenizer(["Hello world", "A longer sentence here."], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    tiny_model.train()
    out = tiny_model(**batch, labels=labels)
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == batch["input_ids"].shape
    out.loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_save_reload_equal(tmp_path, tiny_tokenizer):
    path = save_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = build_tiny_model(build_tiny_tokenizer())
    for (name, p), (_, q) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(p, q), name
    assert tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer("Paris is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits)


def test_lora_wrap_train_save_reload_merge(tmp_path, tiny_model, tiny_tokenizer, tiny_model_dir):
    from peft import LoraConfig, PeftModel, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(tiny_model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in peft_model.parameters()) // 10

    # One optimizer step so the adapter is no longer the identity (lora_B starts at zero).
    batch = tiny_tokenizer(["The capital of France is Paris."], return_tensors="pt")
    optim = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    peft_model.train()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optim.step()
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**batch).logits
        with peft_model.disable_adapter():
            base = peft_model(**batch).logits
    assert not torch.allclose(adapted, base)

    peft_model.save_pretrained(tmp_path / "adapter")
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    reloaded = PeftModel.from_pretrained(base_model, tmp_path / "adapter").eval()
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, adapted, atol=1e-5)
