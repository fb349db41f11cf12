"""A tiny Llama (about 170k parameters) with a byte-level BPE tokenizer, built in-process.

Used by every test and by ``configs/tiny.yaml``: it runs the whole pipeline on a CPU in seconds
with real transformers/peft code paths (chat template, left padding, KV cache, LoRA), without any
download.

BOS handling (one BOS, never two): the chat template renders ``<s>`` itself, and the tokenizer
has **no post-processor**, so ``tokenizer(text)`` never adds special tokens on its own
(``add_special_tokens=True`` is a no-op). Rendering a conversation with the chat template and
tokenizing it therefore gives exactly one BOS, whichever way the caller tokenizes it.
The assistant turn ends with the EOS token ``</s>``, so a model trained on chat data learns to
stop; pad is a separate ``<pad>`` token so EOS is never masked as padding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]  # ids 0..5, in this order
VOCAB_SIZE = 768

# `<s>` once, then `<|role|>\n{content}</s>\n` per message; the generation prompt opens an
# assistant turn that the model closes with `</s>` (the EOS token).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea and the wind.",
    "Explain how photosynthesis works in simple terms.",
    "What is the capital of France? The capital of France is Paris.",
    "Give me three tips for staying healthy: sleep well, eat vegetables, and exercise.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "Summarize the following paragraph in one sentence.",
    "The response is correct but too short, and it does not explain the reasoning.",
    "Add a step-by-step explanation and check the final answer.",
    "Translate the sentence into German: Good morning, how are you?",
    "I am a helpful assistant. I answer questions clearly and honestly.",
    "def add(a, b):\n    return a + b\n",
    "1 + 1 = 2, 2 * 3 = 6, 10 / 4 = 2.5, 100 - 37 = 63.",
    "### Feedback\nWeaknesses: the answer lacks detail.\nSuggestions: give an example.\n"
    "Overall Score: [[7]]\n### Improved Response\nHere is a better answer with an example.",
    "Weaknesses:\n- The response is vague.\nSuggestions:\n- Be specific.\nOverall Score: [[3]]",
    "Overall Score: [[10]] Overall Score: [[1]] Overall Score: [[5]]",
    "Bonjour, comment allez-vous ? Je vais bien, merci.",
    "Hola, ¿cómo estás? Muy bien, gracias.",
    "Guten Tag! Wie geht es Ihnen heute?",
    "你好，世界。今天天气很好。",
    "こんにちは、元気ですか？",
    "Привет, как дела?",
    "مرحبا، كيف حالك؟",
    "Emoji test: 😀 🚀 ✨",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (deterministic) and wrap it as a fast HF tokenizer with a chat template."""
    bpe = Tokenizer(models.BPE())
    # ByteLevel covers every byte, so any UTF-8 text (Chinese, emoji) round-trips without <unk>.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    # Deliberately no post-processor: encoding never adds BOS/EOS; the chat template owns BOS.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        model_input_names=["input_ids", "attention_mask"],
        padding_side="right",  # the usual HF default; the Generator switches to left padding itself
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, hidden-64 Llama (~170k parameters); same seed -> same weights (the global RNG is left untouched)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # exercise grouped-query attention like real Llamas
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Untied: with tied embeddings a random model just copies its last input token forever,
        # which would make generation tests (padding, EOS, stop strings) too easy to pass.
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


def save_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Build and save tokenizer + model as a standard HF folder (AutoModelForCausalLM/AutoTokenizer)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
