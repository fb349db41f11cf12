"""SFTDataModule and DPODataModule, collators, sampler and preview, on the real tiny tokenizer."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from tokenizers import processors

from srt.config import DPOConfig, SFTConfig
from srt.data import (
    IGNORE_INDEX,
    DPOCollator,
    DPODataModule,
    LengthGroupedSampler,
    SFTCollator,
    SFTDataModule,
    build_dpo_examples,
    build_sft_examples,
)
from srt.errors import ConfigError, RecordError, TemplateError
from srt.preview import format_example, preview_records
from srt.records import Feedback, FeedbackRecord, JsonlWriter, PreferencePair


# What the tiny chat template renders (srt/tiny.py), written out here independently of srt.data.
def tiny_prompt(instruction: str, system: str | None = None) -> str:
    sys_turn = f"<|system|>\n{system}</s>\n" if system else ""
    return f"<s>{sys_turn}<|user|>\n{instruction}</s>\n<|assistant|>\n"


def record(
    i: int = 0,
    *,
    response="Paris.",
    weaknesses="Too short.",
    suggestions="Add a reason.",
    score=4,
    refinement="Paris is the capital of France.",
    instruction="What is the capital of France?",
    feedback=True,
) -> FeedbackRecord:
    fb = Feedback(weaknesses=weaknesses, suggestions=suggestions, score=score, raw="raw") if feedback else None
    return FeedbackRecord(
        id=f"r{i}", instruction=instruction, response=response, feedback=fb, refinement=refinement, stage=1
    )


def pair(i: int, prompt="Say hi.", chosen="Hello there, friend!", rejected="hi") -> PreferencePair:
    return PreferencePair(id=f"p{i}", prompt=prompt, chosen=chosen, rejected=rejected)


FULL_FEEDBACK = "Weaknesses:\nToo short.\n\nSuggestions:\nAdd a reason.\n\nOverall Score: [[4]]"


def decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def trained_text(tok, item) -> str:
    return decode(tok, item["input_ids"][item["labels"] != IGNORE_INDEX])


def masked_text(tok, item) -> str:
    return decode(tok, item["input_ids"][item["labels"] == IGNORE_INDEX])


def sft_item(tok, rec, system_prompt=None, **settings):
    dm = SFTDataModule(tok, SFTConfig(**settings), system_prompt=system_prompt, train_records=[rec])
    dm.setup()
    return dm.datasets["train"][0]


# --------------------------------------------------------------------------------------------- SFT


def test_sft_sequence_spans(tiny_tokenizer):
    item = sft_item(tiny_tokenizer, record(), max_length=512)
    assert masked_text(tiny_tokenizer, item) == tiny_prompt("What is the capital of France?")
    assert trained_text(tiny_tokenizer, item) == (
        "Paris.\n\n### Feedback\n" + FULL_FEEDBACK + "\n\n### Improved Response\nParis is the capital of France.</s>"
    )
    ids, labels = item["input_ids"], item["labels"]
    # Trained tokens are one contiguous run that ends with EOS (the template's "\n" after EOS is dropped).
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert (labels[first:] != IGNORE_INDEX).all() and (labels[:first] == IGNORE_INDEX).all()
    assert ids[-1] == labels[-1] == tiny_tokenizer.eos_token_id
    assert (ids == tiny_tokenizer.bos_token_id).sum() == 1 and ids[0] == tiny_tokenizer.bos_token_id


def test_special_token_strings_in_data_stay_text(tiny_tokenizer):
    tok = tiny_tokenizer
    item = sft_item(
        tok, record(response="Use </s> to stop.", refinement="Write <s> or </s> literally."), max_length=512
    )
    # Only the template's EOS ids: end of the user turn and end of the sequence.
    assert (item["input_ids"] == tok.eos_token_id).nonzero().flatten().tolist() == [
        len(tok(tiny_prompt("What is the capital of France?"))["input_ids"]) - 4,
        len(item["input_ids"]) - 1,
    ]
    assert (item["input_ids"] == tok.bos_token_id).sum() == 1
    assert trained_text(tok, item).startswith("Use </s> to stop.")


def test_sft_system_prompt_and_mask_response(tiny_tokenizer):
    item = sft_item(tiny_tokenizer, record(), max_length=512, system_prompt="Be kind.", mask_response=True)
    assert masked_text(tiny_tokenizer, item) == tiny_prompt("What is the capital of France?", "Be kind.") + "Paris."
    assert trained_text(tiny_tokenizer, item).startswith("\n\n### Feedback\nWeaknesses:")


@pytest.mark.parametrize(
    "ablation, expected",
    [
        (
            "no_weaknesses",
            "Paris.\n\n### Feedback\nSuggestions:\nAdd a reason.\n\nOverall Score: [[4]]"
            "\n\n### Improved Response\nBetter.</s>",
        ),
        (
            "no_suggestions",
            "Paris.\n\n### Feedback\nWeaknesses:\nToo short.\n\nOverall Score: [[4]]"
            "\n\n### Improved Response\nBetter.</s>",
        ),
        (
            "no_score",
            "Paris.\n\n### Feedback\nWeaknesses:\nToo short.\n\nSuggestions:\nAdd a reason."
            "\n\n### Improved Response\nBetter.</s>",
        ),
        ("no_feedback", "Paris.\n\n### Improved Response\nBetter.</s>"),
        ("refinement_only", "Better.</s>"),
    ],
)
def test_sft_ablations(tiny_tokenizer, ablation, expected):
    item = sft_item(tiny_tokenizer, record(refinement="Better."), max_length=512, ablation=ablation)
    assert trained_text(tiny_tokenizer, item) == expected
    assert masked_text(tiny_tokenizer, item) == tiny_prompt("What is the capital of France?")


def test_sft_rejects_unusable_records_with_counts(tiny_tokenizer):
    records = [
        record(0),
        record(1, feedback=False),
        record(2, refinement=None),
        record(3, score=None),
        record(4, refinement="   "),
        record(5, weaknesses=" "),
    ]
    dm = SFTDataModule(tiny_tokenizer, SFTConfig(max_length=512), train_records=records)
    dm.setup()
    stats = dm.stats["train"]
    assert (stats.records, stats.examples, stats.rejected) == (6, 1, 5)
    assert stats.rejected_reasons == {"no feedback": 1, "no refinement": 2, "no score": 1, "empty weaknesses": 1}
    # An ablation that does not need the missing part keeps the record.
    dm = SFTDataModule(
        tiny_tokenizer, SFTConfig(max_length=512, ablation="no_score"), train_records=[record(3, score=None)]
    )
    dm.setup()
    assert dm.stats["train"].examples == 1
    with pytest.raises(ConfigError, match="no usable training examples"):
        SFTDataModule(tiny_tokenizer, SFTConfig(max_length=512), train_records=records[1:]).setup()


def _lengths(tok, rec, **cfg):
    return len(build_sft_examples(tok, [rec], SFTConfig(max_length=4096, **cfg))[0]["input_ids"])


def test_sft_truncation_policies(tiny_tokenizer):
    tok = tiny_tokenizer
    long_rec = record(0, response="The quick brown fox jumps over the lazy dog. " * 6)
    short_rec = record(1)
    full = _lengths(tok, long_rec)
    max_length = full - 10
    assert _lengths(tok, short_rec) < max_length

    stats_of = {}
    for policy in ("drop", "truncate_right", "truncate_left_response"):
        dm = SFTDataModule(
            tok, SFTConfig(max_length=max_length, truncation=policy), train_records=[long_rec, short_rec]
        )
        dm.setup()
        stats_of[policy] = dm.stats["train"]
        for item in dm.datasets["train"]:
            assert len(item["input_ids"]) <= max_length
        if policy == "truncate_right":
            cut = dm.datasets["train"][0]
            assert len(cut["input_ids"]) == max_length and cut["labels"][-1] != tok.eos_token_id
        if policy == "truncate_left_response":
            cut = dm.datasets["train"][0]
            assert len(cut["input_ids"]) == max_length
            text = trained_text(tok, cut)
            # The start of the response went; feedback, refinement and EOS are whole.
            assert text.endswith(FULL_FEEDBACK + "\n\n### Improved Response\nParis is the capital of France.</s>")
            assert not text.startswith("The quick")
            assert masked_text(tok, cut) == tiny_prompt("What is the capital of France?")
    assert (stats_of["drop"].examples, stats_of["drop"].dropped_too_long, stats_of["drop"].truncated) == (1, 1, 0)
    for policy in ("truncate_right", "truncate_left_response"):
        assert (stats_of[policy].examples, stats_of[policy].truncated, stats_of[policy].dropped_too_long) == (2, 1, 0)

    # truncate_left_response cannot help when the response is shorter than the excess: dropped, counted.
    stats = SFTDataModule(tok, SFTConfig(max_length=20, truncation="truncate_left_response"), train_records=[short_rec])
    with pytest.raises(ConfigError, match="dropped \\(too long\\) 1"):
        stats.setup()


def test_sft_batch_contract(tiny_tokenizer):
    records = [record(i, response="Paris. " * (i + 1)) for i in range(5)]
    dm = SFTDataModule(tiny_tokenizer, SFTConfig(micro_batch_size=5, max_length=512), train_records=records)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "num_trained_tokens"}
    B, T = batch["input_ids"].shape
    assert B == 5 and batch["labels"].shape == batch["attention_mask"].shape == (B, T)
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels"))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.max() == T and lengths.min() < T
    for row in range(B):
        n = int(lengths[row])
        assert (batch["attention_mask"][row, :n] == 1).all() and (batch["attention_mask"][row, n:] == 0).all()
        assert (batch["input_ids"][row, n:] == tiny_tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()  # pads carry no label
        assert batch["labels"][row, n - 1] == tiny_tokenizer.eos_token_id  # EOS is the last label
        assert (batch["input_ids"][row] == tiny_tokenizer.bos_token_id).sum() == 1
    assert int(batch["num_trained_tokens"]) == int((batch["labels"] != IGNORE_INDEX).sum())


def test_collator_pads_with_eos_when_no_pad_token_and_keeps_eos_label(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    dm = SFTDataModule(
        tok, SFTConfig(micro_batch_size=2, max_length=512), train_records=[record(0), record(1, response="Paris. " * 5)]
    )
    dm.setup()
    batch = dm.collator([dm.datasets["train"][0], dm.datasets["train"][1]])
    short = int(batch["attention_mask"].sum(1).argmin())
    n = int(batch["attention_mask"][short].sum())
    assert (batch["input_ids"][short, n:] == tok.eos_token_id).all()  # pad == eos ...
    assert batch["labels"][short, n - 1] == tok.eos_token_id  # ... yet the real EOS keeps its label
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()


def test_masked_tokens_carry_no_loss(tiny_tokenizer, tiny_model):
    records = [
        record(i, response="Paris. " * (i + 1), instruction="Explain how photosynthesis works. " * (i + 1))
        for i in range(3)
    ]
    dm = SFTDataModule(tiny_tokenizer, SFTConfig(micro_batch_size=3, max_length=512), train_records=records)
    dm.setup()
    batch = SFTCollator(tiny_tokenizer.pad_token_id)([dm.datasets["train"][i] for i in range(3)])
    with torch.no_grad():
        out = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        logits = out.logits.float()
    # By hand: per-token CE for every next-token target, averaged over the labelled positions only.
    targets = batch["input_ids"][:, 1:]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    assert torch.allclose(out.loss, ce[keep].mean(), atol=1e-5)
    assert not torch.allclose(out.loss, ce[batch["attention_mask"][:, 1:].bool()].mean(), atol=1e-4)

    # Changing what sits in padded positions (after every real token, labels -100) changes nothing.
    noisy = batch["input_ids"].clone()
    pads = batch["attention_mask"] == 0
    assert pads.any()
    noisy[pads] = torch.randint(6, len(tiny_tokenizer), (int(pads.sum()),), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss2 = tiny_model(input_ids=noisy, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(out.loss, loss2, atol=1e-6)


# --------------------------------------------------------------------------------------------- templates


def test_template_that_rewrites_content_is_refused(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = tok.chat_template.replace("message['content']", "(message['content'] | upper)")
    with pytest.raises(TemplateError, match="rewrites the content"):
        SFTDataModule(tok, SFTConfig(max_length=512), train_records=[record()]).setup()
    tok.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        SFTDataModule(tok, SFTConfig(max_length=512), train_records=[record()]).setup()


def test_template_without_eos_gets_eos_appended(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = tok.chat_template.replace("+ eos_token + '\n'", "+ '\n\n'")
    assert "eos_token" not in tok.chat_template
    item = sft_item(tok, record(), max_length=512)
    assert trained_text(tok, item).endswith("France.\n\n</s>")
    assert item["labels"][-1] == tok.eos_token_id


def test_bos_added_once_whoever_adds_it(tiny_tokenizer):
    # A tokenizer that adds BOS itself (post-processor) with a template that does not render it.
    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    tok.chat_template = tok.chat_template.replace("{{ bos_token }}", "")
    item = sft_item(tok, record(), max_length=512)
    assert (item["input_ids"] == tok.bos_token_id).sum() == 1 and item["input_ids"][0] == tok.bos_token_id

    # A template that renders BOS twice is refused rather than trained on.
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    with pytest.raises(TemplateError, match="BOS"):
        sft_item(tok, record(), max_length=512)


# --------------------------------------------------------------------------------------------- DPO


def test_dpo_batch_contract_and_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    pairs = [pair(0), pair(1, prompt="Explain photosynthesis.", chosen="Plants turn light into sugar.", rejected="No.")]
    dm = DPODataModule(tok, DPOConfig(micro_batch_size=2, max_length=256, completion_end="eos"), train_records=pairs)
    dm.setup()
    batch = next(iter(dm.val_dataloader() or dm.predict_dataloader()))
    assert sorted(batch["ids"]) == ["p0", "p1"]
    assert "ref_chosen_logps" not in batch
    for row, pid in enumerate(batch["ids"]):
        p = pairs[int(pid[1:])]
        for side in ("chosen", "rejected"):
            ids, mask, labels = (batch[f"{side}_{k}"][row] for k in ("input_ids", "attention_mask", "labels"))
            n = int(mask.sum())
            assert (mask[:n] == 1).all() and (mask[n:] == 0).all() and (labels[n:] == IGNORE_INDEX).all()
            assert decode(tok, ids[:n][labels[:n] == IGNORE_INDEX]) == tiny_prompt(p.prompt)
            assert decode(tok, labels[labels != IGNORE_INDEX]) == getattr(p, side) + "</s>"
            assert (ids == tok.bos_token_id).sum() == 1


def test_dpo_completion_end_feedback_header(tiny_tokenizer):
    """completion_end="feedback" (the dpo section's default): each completion goes on into the SRT
    feedback header, the way an SRT model's response does, and no EOS is trained (stage-2 DPO must
    not teach it to stop there)."""
    from srt.critic_template import FEEDBACK_SEPARATOR

    tok = tiny_tokenizer
    assert DPOConfig().completion_end == "feedback"
    dm = DPODataModule(tok, DPOConfig(micro_batch_size=1, max_length=256), train_records=[pair(0)])
    dm.setup()
    batch = next(iter(dm.predict_dataloader()))
    for side in ("chosen", "rejected"):
        ids, labels = batch[f"{side}_input_ids"][0], batch[f"{side}_labels"][0]
        n = int(batch[f"{side}_attention_mask"][0].sum())
        assert decode(tok, labels[labels != IGNORE_INDEX]) == getattr(pair(0), side) + FEEDBACK_SEPARATOR
        assert tok.eos_token_id not in labels.tolist() and ids[n - 1] != tok.eos_token_id
    dm = DPODataModule(
        tok, DPOConfig(micro_batch_size=1, max_length=256, completion_end="none"), train_records=[pair(0)]
    )
    dm.setup()
    batch = next(iter(dm.predict_dataloader()))
    for side in ("chosen", "rejected"):  # "none": the completion's own tokens only, nothing after them
        labels = batch[f"{side}_labels"][0]
        assert decode(tok, labels[labels != IGNORE_INDEX]) == getattr(pair(0), side)
    with pytest.raises(ConfigError, match="completion_end"):
        DPODataModule(tok, {"completion_end": "stop"}, train_records=[pair(0)])


def test_dpo_truncation_prompt_left_then_completions_right(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = "Explain how photosynthesis works in simple terms. " * 4
    long_answer = "Give me three tips for staying healthy: sleep well, eat vegetables. " * 3
    p = pair(0, prompt=long_prompt, chosen=long_answer, rejected="No.")
    (full,) = build_dpo_examples(tok, [p], DPOConfig(max_length=4096))
    prompt_len = int((~full["chosen"]["train_mask"]).sum())
    chosen_len = int(full["chosen"]["train_mask"].sum())

    # Room for the whole completion once the prompt is cut from the left.
    cfg = DPOConfig(max_length=chosen_len + 8, max_prompt_length=4)
    (ex,) = build_dpo_examples(tok, [p], cfg)
    c = ex["chosen"]
    assert len(c["input_ids"]) == cfg.max_length and int(c["train_mask"].sum()) == chosen_len
    assert c["input_ids"][0] == tok.bos_token_id  # BOS survives left truncation
    kept_prompt = decode(tok, c["input_ids"][1:][~c["train_mask"][1:]])
    assert len(kept_prompt) > 10 and tiny_prompt(long_prompt).endswith(kept_prompt)
    assert torch.equal(ex["rejected"]["input_ids"][:8], c["input_ids"][:8])  # same prompt on both sides

    # Not enough room: prompt kept at max_prompt_length, completions cut from the right.
    from srt.data import DataStats

    stats = DataStats()
    cfg = DPOConfig(max_length=prompt_len, max_prompt_length=prompt_len // 2)
    (ex,) = build_dpo_examples(tok, [p], cfg, stats=stats)
    c = ex["chosen"]
    assert int((~c["train_mask"]).sum()) == prompt_len // 2 and len(c["input_ids"]) == prompt_len
    assert decode(tok, c["input_ids"][c["train_mask"]]) == decode(
        tok, full["chosen"]["input_ids"][prompt_len:][: prompt_len - prompt_len // 2]
    )
    assert (stats.truncated, stats.dropped_too_long) == (1, 0)

    stats = DataStats()
    assert build_dpo_examples(tok, [p], DPOConfig(max_length=prompt_len, truncation="drop"), stats=stats) == []
    assert (stats.truncated, stats.dropped_too_long) == (0, 1)


def test_dpo_rejects_and_duplicate_ids(tiny_tokenizer):
    dm = DPODataModule(
        tiny_tokenizer,
        DPOConfig(max_length=256),
        train_records=[pair(0), pair(1, chosen="same", rejected="same"), pair(2, chosen=" ")],
    )
    dm.setup()
    assert dm.stats["train"].rejected_reasons == {"chosen == rejected": 1, "empty chosen": 1}
    with pytest.raises(RecordError, match="duplicate preference pair id 'p0'"):
        DPODataModule(tiny_tokenizer, DPOConfig(), train_records=[pair(0), pair(0)]).setup()


def test_dpo_reference_logps_passthrough(tiny_tokenizer, tmp_path):
    pairs = [pair(i, prompt="Say hi. " * (i + 1)) for i in range(5)]
    dm = DPODataModule(
        tiny_tokenizer, DPOConfig(micro_batch_size=2, max_length=256), train_records=pairs, val_fraction=0.2
    )
    dm.setup()
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 1
    ref = {f"p{i}": (-float(i), -10.0 - i) for i in range(5)}
    path = tmp_path / "ref.pt"
    torch.save(
        {
            "ids": list(ref),
            "ref_chosen_logps": torch.tensor([v[0] for v in ref.values()]),
            "ref_rejected_logps": torch.tensor([v[1] for v in ref.values()]),
        },
        path,
    )
    dm.set_reference_logps(path)
    seen = {}
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            assert batch["ref_chosen_logps"].dtype == torch.float32 and batch["ref_chosen_logps"].shape == (
                len(batch["ids"]),
            )
            for k, pid in enumerate(batch["ids"]):
                seen[pid] = (float(batch["ref_chosen_logps"][k]), float(batch["ref_rejected_logps"][k]))
    assert seen == ref

    # predict: every pair of every split, in order (train then val), for precomputation.
    order = [pid for batch in dm.predict_dataloader() for pid in batch["ids"]]
    assert order == dm.datasets["train"].ids() + dm.datasets["val"].ids()

    with pytest.raises(ConfigError, match="missing for 1 of 4 train pairs"):
        dm.set_reference_logps({k: v for k, v in ref.items() if k != dm.datasets["train"].ids()[0]})
    # Set before setup: checked and attached at setup.
    dm2 = DPODataModule(tiny_tokenizer, DPOConfig(micro_batch_size=5, max_length=256), train_records=pairs)
    dm2.set_reference_logps({k: {"chosen": c, "rejected": r} for k, (c, r) in ref.items()})
    batch = next(iter(dm2.train_dataloader()))
    assert dict(zip(batch["ids"], batch["ref_rejected_logps"].tolist())) == {k: v[1] for k, v in ref.items()}


def test_dpo_collator_standalone_mixed_ref_is_an_error(tiny_tokenizer):
    dm = DPODataModule(tiny_tokenizer, DPOConfig(max_length=256), train_records=[pair(0), pair(1)])
    dm.setup()
    a, b = dm.datasets["train"][0], dm.datasets["train"][1]
    a["ref_chosen_logps"], a["ref_rejected_logps"] = -1.0, -2.0
    with pytest.raises(ValueError, match="reference log-probs"):
        DPOCollator(tiny_tokenizer.pad_token_id)([a, b])


# --------------------------------------------------------------------------------------------- files, options


def test_state_dict_carries_the_train_loader_position_and_data_settings(tiny_tokenizer):
    """A checkpoint holds the datamodule's state; a fresh datamodule loaded from it serves the rest of
    the epoch, in the same order (what exact resume after a kill relies on)."""
    pairs = [pair(i, prompt="Say hi. " * (1 + i % 4)) for i in range(12)]
    config = DPOConfig(micro_batch_size=3, max_length=256)
    dm = DPODataModule(tiny_tokenizer, config, system_prompt="Be kind.", train_records=pairs, seed=4)
    full = [batch["ids"] for batch in dm.train_dataloader()]
    loader = dm.train_dataloader()
    first_two = [batch["ids"] for _, batch in zip(range(2), loader)]
    state = dm.state_dict()
    assert first_two == full[:2] and state["train_loader"] == {"epoch": 0, "batches": 2}
    assert state["mode"] == "dpo" and state["train_examples"] == 12 and state["packing"] is False
    assert state["config"] == {
        "max_length": 256,
        "max_prompt_length": None,
        "truncation": "truncate",
        "system_prompt": "Be kind.",
        "completion_end": "feedback",
    }
    resumed = DPODataModule(tiny_tokenizer, config, system_prompt="Be kind.", train_records=pairs, seed=4)
    resumed.load_state_dict(state)
    assert [batch["ids"] for batch in resumed.train_dataloader()] == full[2:]
    assert [batch["ids"] for batch in resumed.train_dataloader()] == full  # only the next loader resumes


def test_chat_format_and_system_prompt_are_one_choice(tiny_tokenizer):
    from srt.data import ChatFormat

    chat = ChatFormat(tiny_tokenizer, "Be kind.")
    (ex,) = build_sft_examples(tiny_tokenizer, [record()], SFTConfig(), chat=chat, system_prompt="Be kind.")
    assert decode(tiny_tokenizer, ex["input_ids"]).startswith(tiny_prompt("What is the capital of France?", "Be kind."))
    with pytest.raises(ConfigError, match="system_prompt"):
        build_sft_examples(tiny_tokenizer, [record()], SFTConfig(), chat=chat, system_prompt="Be brief.")


def test_files_and_val_files(tiny_tokenizer, tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    with JsonlWriter(train, "w") as w:
        for i in range(3):
            w.write(record(i))
    with JsonlWriter(val, "w") as w:
        w.write(record(9))
    dm = SFTDataModule(
        tiny_tokenizer, SFTConfig(max_length=512, micro_batch_size=2), train_files=[train], val_files=val
    )
    dm.setup()
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (3, 1)
    assert sum(len(b["input_ids"]) for b in dm.val_dataloader()) == 1
    assert dm.stats["val"].examples == 1


def test_bad_options_are_config_errors(tiny_tokenizer):
    # The settings are the run config's section; a mapping of its fields is validated as one.
    with pytest.raises(ValidationError, match="truncation"):
        SFTConfig(truncation="middle")
    with pytest.raises(ConfigError, match="sft settings: truncation"):
        SFTDataModule(tiny_tokenizer, {"truncation": "middle"}, train_records=[record()])
    with pytest.raises(ConfigError, match="sft settings: ablation"):
        SFTDataModule(tiny_tokenizer, {"ablation": "no_everything"}, train_records=[record()])
    with pytest.raises(ConfigError, match="dpo settings: mask_response"):  # an SFT setting
        DPODataModule(tiny_tokenizer, {"mask_response": True}, train_records=[pair(0)])
    with pytest.raises(ConfigError, match="expected srt.config.DPOConfig"):  # the other stage's section
        DPODataModule(tiny_tokenizer, SFTConfig(), train_records=[pair(0)])
    with pytest.raises(ConfigError, match="needs train_records or train_files"):
        SFTDataModule(tiny_tokenizer, SFTConfig())
    with pytest.raises(ConfigError, match="val_fraction"):
        SFTDataModule(tiny_tokenizer, SFTConfig(), train_records=[record()], val_fraction=1.0)
    with pytest.raises(RecordError, match="train_records\\[0\\]"):
        DPODataModule(tiny_tokenizer, DPOConfig(), train_records=[record()]).setup()


# --------------------------------------------------------------------------------------------- sampler


def _batches(sampler, epoch=0):
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[k : k + sampler.batch_size] for k in range(0, len(order), sampler.batch_size)]


def test_sampler_each_index_once_and_length_homogeneous():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 1000, (103,), generator=gen).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=1000)
    batches = _batches(sampler)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert all(len(b) == 4 for b in batches[:-1]) and len(batches[-1]) == 103 % 4
    # One mega-batch holds everything: each batch is a contiguous run of the sorted lengths,
    # so no two batches' length ranges overlap.
    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(ranges, ranges[1:]))
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first

    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    plain = _batches(LengthGroupedSampler(lengths, batch_size=4, seed=3, group_by_length=False))
    assert sorted(i for b in plain for i in b) == list(range(103))
    assert spread * 5 < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain)


def test_sampler_seeded_per_epoch():
    lengths = list(range(50))
    a = LengthGroupedSampler(lengths, batch_size=4, seed=7, mega_batch_mult=2)
    b = LengthGroupedSampler(lengths, batch_size=4, seed=7, mega_batch_mult=2)
    assert _batches(a, 0) == _batches(b, 0)
    assert _batches(a, 1) == _batches(b, 1) != _batches(a, 0)
    assert _batches(LengthGroupedSampler(lengths, batch_size=4, seed=8, mega_batch_mult=2)) != _batches(a, 0)


@pytest.mark.parametrize("n", [40, 41])
def test_sampler_ddp_shards(n):
    lengths = [(i * 37) % 101 for i in range(n)]
    shards = [
        _batches(LengthGroupedSampler(lengths, batch_size=3, num_replicas=4, rank=r, seed=5, mega_batch_mult=100))
        for r in range(4)
    ]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    assert [len(b) for b in shards[0]] == [len(b) for b in shards[3]]
    flat = [i for s in shards for b in s for i in b]
    assert set(flat) == set(range(n))
    if n % 4 == 0:
        assert len(flat) == n  # disjoint shards
    else:
        assert len(flat) == n + (4 - n % 4)  # padded like DistributedSampler
    # Ranks step through the same global batch (one mega-batch here): at each step all ranks hold
    # one contiguous run of the sorted lengths, so the steps' length ranges do not overlap.
    ranges = sorted(
        (min(lengths[i] for b in step for i in b), max(lengths[i] for b in step for i in b)) for step in zip(*shards)
    )
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(ranges, ranges[1:]))


class _RecordIds(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, _):
        while len(self.seen) <= self.current_epoch:
            self.seen.append([])
        self.seen[self.current_epoch] += batch["ids"]
        return (self.w * batch["chosen_input_ids"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_keeps_sampler_and_reshuffles_each_epoch(tiny_tokenizer):
    pairs = [pair(i, prompt="Say hi. " * (1 + i % 7)) for i in range(12)]
    dm = DPODataModule(tiny_tokenizer, DPOConfig(micro_batch_size=3, max_length=256), train_records=pairs, seed=1)
    module = _RecordIds()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    assert [sorted(ids) for ids in module.seen] == [sorted(p.id for p in pairs)] * 2
    assert module.seen[0] != module.seen[1]  # set_epoch reached our sampler
    assert isinstance(trainer.train_dataloader.sampler, LengthGroupedSampler)


# --------------------------------------------------------------------------------------------- preview


def test_preview_marks_trained_tokens(tiny_tokenizer):
    item = sft_item(tiny_tokenizer, record(), max_length=512, mask_response=True)
    text = format_example(tiny_tokenizer, item, color=False)
    n_trained = int((item["labels"] != IGNORE_INDEX).sum())
    assert f"{len(item['input_ids'])} tokens, {n_trained} trained, {len(item['input_ids']) - n_trained} masked" in text
    assert "⟦\n\n### Feedback\nWeaknesses:" in text and "France.</s>⟧" in text
    assert tiny_prompt("What is the capital of France?") + "Paris.⟦" in text
    colored = format_example(tiny_tokenizer, item, color=True)
    assert "\033[32m\n\n### Feedback" in colored and "⟦" not in colored

    out = preview_records(
        tiny_tokenizer, [record(0), record(1, feedback=False), record(2)], 2, SFTConfig(max_length=512), color=False
    )
    assert out.count("== example") == 1 and "rejected 1 (no feedback: 1)" in out
    out = preview_records(tiny_tokenizer, [pair(0)], 5, DPOConfig(max_length=512, completion_end="eos"), color=False)
    assert "-- chosen:" in out and "⟦Hello there, friend!</s>⟧" in out and "⟦hi</s>⟧" in out
    out = preview_records(
        tiny_tokenizer, [pair(0)], 5, DPOConfig(max_length=512), color=False, system_prompt="Be kind."
    )
    assert "<|system|>\nBe kind.</s>" in out and "⟦hi\n\n### Feedback\n⟧" in out  # the dpo section's default end


class _WriteIdsPerRank(L.LightningModule):
    """Writes the pair ids each rank trains on, per epoch (ddp_spawn workers share no memory)."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.out_dir = out_dir

    def training_step(self, batch, _):
        path = f"{self.out_dir}/rank{self.global_rank}-epoch{self.current_epoch}.txt"
        with open(path, "a") as f:
            f.write("".join(f"{i}\n" for i in batch["ids"]) + "--\n")
        return (self.w * batch["chosen_input_ids"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_ddp_spawn_shards_train_data_disjointly(tiny_tokenizer, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    pairs = [pair(i, prompt="Say hi. " * (1 + i % 5)) for i in range(10)]
    dm = DPODataModule(tiny_tokenizer, DPOConfig(micro_batch_size=2, max_length=256), train_records=pairs, seed=3)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        logger=False,
        enable_checkpointing=False,
        strategy=DDPStrategy(process_group_backend="gloo", start_method="spawn"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_WriteIdsPerRank(str(tmp_path)), datamodule=dm)
    for epoch in range(2):
        shards = [(tmp_path / f"rank{r}-epoch{epoch}.txt").read_text().split("--\n")[:-1] for r in range(2)]
        assert len(shards[0]) == len(shards[1]) == 3  # 5 examples a rank, batch 2: same step count
        ids = [[i for b in s for i in b.split()] for s in shards]
        assert sorted(ids[0] + ids[1]) == sorted(p.id for p in pairs)  # disjoint, complete
    assert (tmp_path / "rank0-epoch0.txt").read_text() != (tmp_path / "rank0-epoch1.txt").read_text()


def test_preprocess_preview_reads_the_run_config_sections(tmp_path, monkeypatch):
    """``srt-train preprocess``: the sft / dpo section and model.system_prompt shape the preview."""
    from srt.config import RunConfig
    from srt.pipeline.preview import preview_from_config

    monkeypatch.setattr("sys.stdout.isatty", lambda: False)  # trained spans in brackets, not colour

    with JsonlWriter(tmp_path / "records.jsonl", "w") as w:
        w.write(record(0))
    with JsonlWriter(tmp_path / "pairs.jsonl", "w") as w:
        w.write(pair(0))
    cfg = RunConfig.model_validate(
        {"model": {"path": "tiny", "system_prompt": "Be kind."}, "sft": {"mask_response": True}}
    )
    out = preview_from_config(cfg, records_path=str(tmp_path / "records.jsonl"), n=1)
    assert "<|system|>\nBe kind.</s>" in out and "Paris.⟦\n\n### Feedback" in out  # the response is masked
    out = preview_from_config(cfg, records_path=str(tmp_path / "pairs.jsonl"), n=1, view="dpo")
    assert "<|system|>\nBe kind.</s>" in out and "⟦hi\n\n### Feedback\n⟧" in out
