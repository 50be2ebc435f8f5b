"""A tiny Llama-style model and a locally trained BPE tokenizer with a chat template: no download.

Tests train from it; the GPU benchmark reuses the tokenizer with a random-init model of a real shape.
"""

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|unk|>"]
CORPUS = [
    "How do I reset my password? Open settings, choose security, then reset password.",
    "What are your opening hours? We are open from nine to five on weekdays.",
    "Can I get a refund? Yes, within thirty days of purchase with the receipt.",
    "Where is my order? Track it from the orders page with your order number.",
    "The quick brown fox jumps over the lazy dog. Thank you for contacting support.",
]


def build_tokenizer(path: Path, *, vocab: int = 384):
    """Train a byte-level BPE tokenizer on a few sentences and save it, with a chat template, to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_tiny_model(
    path: Path, *, hidden: int = 64, layers: int = 2, vocab: int = 384, max_positions: int = 256
) -> Path:
    """Save a random-init LlamaForCausalLM (hidden 64, 2 layers) and its tokenizer to ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    fast = build_tokenizer(path, vocab=vocab)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path
