"""HF folders, token windows and the causal-LM metric against transformers and by hand; bad input: one line each."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, PretrainedConfig

from landscape_ray.compute.language import causal_lm
from landscape_ray.inputs.hf import build_hf, hf_config, load_hf, load_tokenizer, max_positions, tied_names
from landscape_ray.inputs.text import bundled_text, load_text_split, read_texts, token_windows

from . import hf_fixtures
from .hf_fixtures import TIED, cut, fails, same_weights, windows

make_hf = hf_fixtures.make_hf  # the fixture, made visible to this module's tests


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):  # each test its own token cache, never ~/.cache
    monkeypatch.setenv("LANDSCAPE_RAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokens"


@pytest.mark.parametrize("family", TIED)
def test_load_hf_equals_from_pretrained(make_hf, family):
    folder = make_hf(family)
    rng = torch.get_rng_state()
    ours = load_hf(str(folder))
    assert torch.equal(torch.get_rng_state(), rng) and not ours.training  # the initialisation used a forked RNG
    ref = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    ids = windows(folder)
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert tied_names(ours) == TIED[family]
    assert all(ours.get_parameter(n) is ours.get_parameter(f) for n, f in TIED[family].items())  # still one tensor
    assert max_positions(hf_config(str(folder))) == 128 and max_positions(PretrainedConfig()) is None


@pytest.mark.parametrize("family", TIED)
def test_causal_lm_equals_transformers_loss(make_hf, family):
    model, ids = load_hf(str(make_hf(family))), windows(make_hf(family))
    with torch.no_grad():
        loss_sum, count, sums = causal_lm(model, {"input_ids": ids})
        ref = model(input_ids=ids, labels=ids)
    assert loss_sum.dtype == torch.float64 and count == 4 * 31 and causal_lm.perplexity
    assert float(loss_sum / count) == pytest.approx(float(ref.loss), rel=1e-6)
    assert int(sums["acc"]) == int((ref.logits[:, :-1].argmax(-1) == ids[:, 1:]).sum())
    # padding: targets where attention_mask is 0 count for neither, as labels=-100 in transformers
    mask = torch.ones_like(ids)
    mask[1, -7:], mask[2, :3] = 0, 0
    with torch.no_grad():
        loss_sum, count, _ = causal_lm(model, {"input_ids": ids, "attention_mask": mask})
        ref = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    assert int(count) == 4 * 31 - 7 - 2  # the first token is nobody's target
    assert float(loss_sum / count) == pytest.approx(float(ref), rel=1e-6)


def test_causal_lm_is_token_weighted(make_hf):
    model, ids = load_hf(str(make_hf("gpt2"))), windows(make_hf("gpt2"), 32, 5)
    batches = [ids[:3], ids[3:, :12]]  # 3 × 31 and 2 × 11 predicted tokens
    with torch.no_grad():
        parts = [causal_lm(model, b) for b in batches]
        logp = [torch.log_softmax(model(input_ids=b).logits.double(), dim=-1)[:, :-1] for b in batches]
    by_hand = torch.cat([-lp.gather(-1, b[:, 1:, None]).flatten() for lp, b in zip(logp, batches)])  # -log p(next)
    assert sum(p[1] for p in parts) == 3 * 31 + 2 * 11 == len(by_hand)
    mean = float(sum(p[0] for p in parts) / sum(p[1] for p in parts))
    assert mean == pytest.approx(float(by_hand.mean()), rel=1e-6)


def test_token_windows_by_hand(make_hf, tmp_path, caplog):
    tok, text = load_tokenizer(str(make_hf("gpt2"))), bundled_text("test")
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    got = load_text_split([str(tmp_path / "t.txt")], "train", tok, 32, None)
    assert "longer than the specified maximum" not in caplog.text  # the text is longer than model_max_length (128)
    expected = cut(tok(text)["input_ids"], 32)
    assert "longer than the specified maximum" in caplog.text  # ... and the plain call warns of it
    np.testing.assert_array_equal(got, expected)
    assert read_texts(str(tmp_path / "t.txt")) == [text]
    np.testing.assert_array_equal(load_text_split(None, "test", tok, 32, None), expected)  # the bundled text


def test_jsonl_and_parquet_windows_per_file(make_hf, tmp_path):
    tok = load_tokenizer(str(make_hf("gpt2")))
    texts = bundled_text("test").split("\n\n")[:5]
    ids = [tok(t)["input_ids"] for t in texts]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts[:3])))
    pq.write_table(pa.table({"text": texts[3:], "n": [3, 4]}), tmp_path / "b.parquet")
    files = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")]
    by_hand = [cut(ids[0] + ids[1] + ids[2], 16), cut(ids[3] + ids[4], 16)]  # windows never span two files
    np.testing.assert_array_equal(load_text_split(files, "train", tok, 16, None), np.concatenate(by_hand))
    np.testing.assert_array_equal(token_windows(read_texts(files[1]), tok, 16), by_hand[1])
    with fails("data.files.train[0]", "b.parquet", "no column 'body'"):
        read_texts(files[1], "body")
    with fails("data.files.test[1]", "file not found", "gone.txt"):
        load_text_split([files[0], str(tmp_path / "gone.txt")], "test", tok, 16, None)
    # a tokenizer that adds a token to each text: kept, once per text (and cached apart from the other's windows)
    bos, eos = load_tokenizer(str(make_hf("gpt2"))), tok.eos_token_id
    bos.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.eos_token} $A", special_tokens=[(tok.eos_token, eos)]
    )
    by_hand = [cut([eos] + ids[0] + [eos] + ids[1] + [eos] + ids[2], 16), cut([eos] + ids[3] + [eos] + ids[4], 16)]
    np.testing.assert_array_equal(load_text_split(files, "train", bos, 16, None), np.concatenate(by_hand))


def test_sequences_seed_and_cache(make_hf, cache):
    tok = load_tokenizer(str(make_hf("gpt2")))
    everything = load_text_split(None, "train", tok, 64, None)
    n = len(everything)
    np.testing.assert_array_equal(load_text_split(None, "train", tok, 64, 5), everything[:5])
    chosen = np.sort(np.random.default_rng(3).choice(n, 5, replace=False))
    np.testing.assert_array_equal(load_text_split(None, "train", tok, 64, 5, seed=3), everything[chosen])
    with fails("data.sequences", f"{n + 1} sequences of 64 tokens", f"holds only {n}"):
        load_text_split(None, "train", tok, 64, n + 1)
    (file,) = cache.glob("*.npy")
    np.save(file, everything + 1)  # a cache hit returns what the file holds
    np.testing.assert_array_equal(load_text_split(None, "train", tok, 64, None), everything + 1)
    file.write_bytes(b"\x93NUMPY damaged")  # a damaged file is recomputed and rewritten
    np.testing.assert_array_equal(load_text_split(None, "train", tok, 64, None), everything)
    np.testing.assert_array_equal(np.load(file), everything)


def test_weights_formats(make_hf, tmp_path):
    folder = shutil.copytree(make_hf("llama"), tmp_path / "m")
    expected, state = load_hf(str(folder)).state_dict(), load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(state)  # two shards and their index, as save_pretrained writes a large model
    save_file({k: state[k] for k in names[:5]}, folder / "a.safetensors")
    save_file({k: state[k] for k in names[5:]}, folder / "b.safetensors")
    weight_map = {k: "a.safetensors" if i < 5 else "b.safetensors" for i, k in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert same_weights(load_hf(str(folder)), expected)
    shutil.copy(folder / "a.safetensors", tmp_path / "a.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../a.safetensors"}}))
    with fails("model.path", "outside its folder", "../a.safetensors"):
        load_hf(str(folder))
    (folder / "model.safetensors.index.json").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with fails("model.path", "pytorch_model.bin is a pickle", "--trust-checkpoint"):
        load_hf(str(folder))
    assert same_weights(load_hf(str(folder), trust=True), expected)
    (folder / "pytorch_model.bin").unlink()
    with fails("model.path", "holds no weights"):
        load_hf(str(folder))
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    with fails("model.path", "cannot read", "model.safetensors"):
        load_hf(str(folder))
    save_file({k.removeprefix("model."): v for k, v in state.items()}, folder / "model.safetensors")  # base model's
    assert same_weights(load_hf(str(folder)), expected)
    save_file({k: v for k, v in state.items() if k != "model.norm.weight"}, folder / "model.safetensors")
    with fails("model.path", "missing model.norm.weight"):
        load_hf(str(folder))


def test_dtype_and_bad_folders(make_hf, tmp_path):
    folder = shutil.copytree(make_hf("gpt2"), tmp_path / "m")
    assert next(build_hf(str(folder), "bfloat16").parameters()).dtype == torch.bfloat16
    assert next(build_hf(str(folder), "auto").parameters()).dtype == torch.float32  # the config's dtype
    with fails("model.dtype", "float64"):
        build_hf(str(folder), "float64")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "x.Model"}}))
    with fails("model.path", "config.json", "remote code", "never run"):
        load_hf(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "homebrew"}))
    with fails("model.path", "'homebrew'", "remote code"):
        hf_config(str(folder))
    with fails("model.path", "not a folder"):
        hf_config(str(tmp_path / "nowhere"))
    (folder / "tokenizer.json").unlink()
    with fails("model.path", "has no tokenizer", "tokenizer.json"):
        load_tokenizer(str(folder))


def test_bad_text_files(make_hf, tmp_path):
    with fails("data.files.train[0]", "file not found", "gone.txt"):
        read_texts(str(tmp_path / "gone.txt"))
    lines = ['{"text": "a"}', "{not json", '{"body": "b"}', '{"text": 3}']
    for bad, words in zip(lines[1:], ["is not JSON", "has no 'text' field", "is a int, not a string"]):
        (tmp_path / "x.jsonl").write_text(f"{lines[0]}\n{bad}\n")
        with fails("data.files.train[0]", "x.jsonl line 2", words):
            read_texts(str(tmp_path / "x.jsonl"))
    (tmp_path / "x.csv").write_text("text\n")
    with fails("data.files.test[2]", ".txt, .jsonl, .parquet"):
        read_texts(str(tmp_path / "x.csv"), field="data.files.test[2]")
    (tmp_path / "x.txt").write_bytes(b"caf\xe9")
    with fails("data.files.train[0]", "not UTF-8"):
        read_texts(str(tmp_path / "x.txt"))
    (tmp_path / "short.txt").write_text("too short")
    with fails("data.files.train", "no whole sequence of 64 tokens"):
        load_text_split([str(tmp_path / "short.txt")], "train", load_tokenizer(str(make_hf("gpt2"))), 64, None)
