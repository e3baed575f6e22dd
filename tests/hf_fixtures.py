"""Tiny Hugging Face folders for the tests, as `save_pretrained` writes them: a byte-level BPE tokenizer trained on the
bundled text, and GPT-2, Llama and Qwen2 models of a few thousand parameters with that tokenizer.

    make_tokenizer(folder)                          # tokenizer.json, tokenizer_config.json, ...
    make_model(folder, "llama", seed=1)             # config.json, model.safetensors and the tokenizer
    def test_x(make_hf): folder = make_hf("gpt2")   # the fixture: one folder per (family, seed) and session
    with fails("model.path", "no weights"): ...     # a SpecError of one line, naming its field, holding the words

The tokenizer is trained once per session (about a second) and kept in `_TOKENIZER`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.hf import load_tokenizer
from landscape_ray.inputs.text import bundled_text, load_text_split

EOS = "<|endoftext|>"
VOCAB = 400
POSITIONS = 128
_TOKENIZER = None  # the trained PreTrainedTokenizerFast, shared by every folder of the session
# {name: the name it shares storage with} in the models of each family
TIED = {
    "gpt2": {"lm_head.weight": "transformer.wte.weight"},
    "llama": {},
    "qwen2": {"lm_head.weight": "model.embed_tokens.weight"},
}


def trained_tokenizer():
    """The session's tokenizer: byte-level BPE (as GPT-2's) on the bundled train text, one special token."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has a token: nothing is unknown
            show_progress=False,
        )
        tok.train_from_iterator(bundled_text("train").split("\n\n"), trainer)
        # model_max_length below the length of the texts, so that tokenizing them would warn if nothing stopped it
        _TOKENIZER = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=POSITIONS
        )
    return _TOKENIZER


def make_tokenizer(folder: str | Path) -> Path:
    trained_tokenizer().save_pretrained(folder)
    return Path(folder)


def tiny_config(family: str, **overrides):
    """A config of `family` with hidden size 32, 2 layers, the tokenizer's vocabulary and 128 positions."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    tok = trained_tokenizer()
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    ids["pad_token_id"] = tok.pad_token_id
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "max_position_embeddings": POSITIONS}
    if family == "gpt2":  # tied input and output embeddings, GPT-2's default
        config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=POSITIONS, **ids)
    elif family == "llama":  # untied embeddings, no biases, grouped-query attention (4 heads, 2 key/value heads)
        config = LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, **ids)
    elif family == "qwen2":  # biases on q, k and v; tied embeddings, as the small Qwen2 models have
        config = Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **ids)
    else:
        raise ValueError(f"unknown family {family!r}")
    for key, value in overrides.items():
        setattr(config, key, value)
    config.architectures = [
        {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family]
    ]
    return config


def make_model(folder: str | Path, family: str, seed: int = 0, **overrides) -> Path:
    """A saved `family` model (weights drawn under `torch.manual_seed(seed)`) with the tokenizer in `folder`."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)  # safetensors: the only format transformers 5 writes
    make_tokenizer(folder)
    return Path(folder)


@pytest.fixture(scope="session")
def make_hf(tmp_path_factory):
    """make_hf(family, seed=0) -> a folder made once per session; tests that change a folder copy it first."""
    made = {}

    def make(family: str, seed: int = 0) -> Path:
        if (family, seed) not in made:
            made[family, seed] = make_model(tmp_path_factory.mktemp(f"{family}_{seed}"), family, seed)
        return made[family, seed]

    return make


@contextlib.contextmanager
def fails(field: str, *words: str):
    """pytest.raises for a SpecError of one line that starts with `field` and holds each of `words`."""
    with pytest.raises(SpecError) as info:
        yield info
    message = str(info.value)
    assert message.startswith(f"{field}: ") and "\n" not in message, message
    assert all(w in message for w in words), message


def cut(ids: list[int], seq_len: int) -> np.ndarray:
    """Token windows by hand: consecutive rows of `seq_len` ids, the incomplete tail dropped."""
    n = len(ids) // seq_len
    return np.array(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


def windows(folder, seq_len: int = 32, sequences: int = 4) -> torch.Tensor:
    """The first `sequences` windows of the bundled test text, with the folder's tokenizer."""
    return torch.from_numpy(load_text_split(None, "test", load_tokenizer(str(folder)), seq_len, sequences))


def same_weights(model, expected: dict) -> bool:
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
