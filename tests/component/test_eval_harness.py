"""The harness on a 2-layer random Llama: batching, per-row stopping, results files in protocol order."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from flowertune.eval.harness import RowStop, end_token_ids, evaluate, generate_batch


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from flowertune.config import ModelConfig
    from flowertune.models.load import load_tokenizer

    return load_tokenizer(ModelConfig(name="embedded"))


@pytest.fixture(scope="module")
def tiny_model(tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


def test_left_padded_batch_matches_single_prompts(tiny_model: Any, tokenizer: Any) -> None:
    tokenizer.padding_side = "left"
    prompts = [tokenizer(t)["input_ids"] for t in ("short", "a much longer prompt than the first one", "mid one")]
    batched = generate_batch(tiny_model, tokenizer, prompts, [4, 2, 4])
    single = [generate_batch(tiny_model, tokenizer, [p], [b])[0] for p, b in zip(prompts, [4, 2, 4])]
    assert batched == single
    assert len(tokenizer(batched[1], add_special_tokens=False)["input_ids"]) <= 2  # own budget respected


def test_row_stop_on_stop_string_budget_and_end_token(tokenizer: Any) -> None:
    stop = RowStop(tokenizer, {tokenizer.eos_token_id}, ("positive",))
    positive = tokenizer(" it is positive", add_special_tokens=False)["input_ids"]
    negative = tokenizer(" it is negative", add_special_tokens=False)["input_ids"]
    assert stop(positive, 100) == "stop" and stop(negative, 100) is None  # "negative" is not final: no stop
    assert stop(negative[:2], 2) == "budget" and stop(negative[:2], 3) is None  # own budget
    assert stop(negative + [tokenizer.eos_token_id], 100) == "eos"


def test_stop_string_lets_an_end_token_follow(tokenizer: Any) -> None:
    """After a stop string a row runs STOP_GRACE more tokens, so an EOS right after the label is seen."""
    from types import SimpleNamespace

    from flowertune.eval.harness import STOP_GRACE, generate_rows

    eos = tokenizer.eos_token_id
    vocab = tokenizer.get_vocab()
    a, b = vocab["A"], vocab["B"]  # the prompts' last tokens choose the continuation
    pos = tokenizer(" positive", add_special_tokens=False)["input_ids"]
    cap = tokenizer(" Positive", add_special_tokens=False)["input_ids"]
    filler = [vocab["x"], vocab["y"]]
    table = {a: pos[0], b: cap[0], pos[-1]: eos, cap[-1]: filler[0], filler[0]: filler[1], filler[1]: filler[0]}
    table.update({t: n for chain in (pos, cap) for t, n in itertools.pairwise(chain)})
    assert len({a, b, eos, *pos, *cap, *filler}) == 3 + len(pos) + len(cap) + 2  # the chains do not collide

    class NextToken(torch.nn.Module):
        """A stateless "model": the next token is a fixed function of the last one."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.generation_config = None

        def forward(self, input_ids: Any, **kwargs: Any) -> Any:
            logits = torch.full((*input_ids.shape, len(tokenizer)), -1e9)
            for row, last in enumerate(input_ids[:, -1].tolist()):
                logits[row, -1, table.get(last, eos)] = 0.0
            return SimpleNamespace(logits=logits)

    prompts = [tokenizer("Answer: ")["input_ids"] + [a], tokenizer("Answer: ")["input_ids"] + [b]]
    gens = generate_rows(NextToken(), tokenizer, prompts, [50, 50], ("positive", "Positive"))
    assert gens[0].end == "eos" and gens[0].new_tokens == len(pos) + 1 and gens[0].text == " positive"
    assert gens[1].end == "stop" and gens[1].new_tokens == len(cap) + STOP_GRACE


def test_matches_model_generate_row_by_row(tiny_model: Any, tokenizer: Any) -> None:
    """Dropping finished rows from the batch changes nothing: each row equals greedy generate alone."""
    texts = ("short", "a much longer prompt than the first one", "mid one", "x")
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    budgets = [12, 3, 7, 1]
    batched = generate_batch(tiny_model, tokenizer, prompts, budgets)
    for p, b, got in zip(prompts, budgets, batched):
        out = tiny_model.generate(input_ids=torch.tensor([p]), max_new_tokens=b, do_sample=False,
                                  eos_token_id=sorted(end_token_ids(tiny_model, tokenizer)),
                                  pad_token_id=tokenizer.pad_token_id)
        assert got == tokenizer.decode(out[0, len(p):], skip_special_tokens=True)
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) <= b for t, b in zip(batched, budgets))
    # a zero budget generates nothing and does not shift the other rows
    assert generate_batch(tiny_model, tokenizer, [prompts[0], prompts[1], prompts[2]], [12, 0, 7]) == [
        batched[0], "", batched[2]]


def test_peft_adapter_model_matches_its_merged_weights(tiny_model: Any, tokenizer: Any) -> None:
    """Through a PEFT wrapper (how an adapter is evaluated) the KV-cache decoder uses the adapter."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    prompts = [tokenizer(t)["input_ids"] for t in ("short", "a much longer prompt than the first one")]
    got = generate_batch(peft_model, tokenizer, prompts, [8, 8])
    merged = peft_model.merge_and_unload()
    assert got == generate_batch(merged, tokenizer, prompts, [8, 8])
    assert got != generate_batch(tiny_model, tokenizer, prompts, [8, 8])  # the adapter changed the output


def test_evaluate_writes_results_in_protocol_order(tiny_model: Any, tokenizer: Any, fixture_dir: Path,
                                                   small_mmlu: None, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from flowertune.eval import protocol

    monkeypatch.setattr(protocol, "FINANCE_MAX_LENGTH", 64)  # a random model never stops by itself
    names = ["pubmedqa", "medmcqa", "medqa", "careqa", "mmlu", "fpb", "fiqa", "tfns"]
    results = evaluate(tiny_model, tokenizer, names, fixture_dir, limit=3, batch_size=2, out_dir=tmp_path,
                       progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert list(results) == names
    for name in names:
        res = results[name]
        assert 0.0 <= res["score"] <= 100.0
        assert res["n"] == min(3, res["n"]) and res["n"] >= 1
        assert res["seconds"] > 0 and res["items_per_s"] > 0 and res["protocol"]
        rows = [json.loads(line) for line in (tmp_path / f"items-{name}.jsonl").read_text().splitlines()]
        assert len(rows) == res["n"]
        assert set(rows[0]) == {"id", "prompt", "generation", "extracted", "gold", "correct", "end", "new_tokens"}
        assert all(r["end"] in ("eos", "budget", "stop") for r in rows)
        assert res["ended_at_eos_pct"] == pytest.approx(100 * sum(r["end"] == "eos" for r in rows) / len(rows))
        assert sum(r["correct"] for r in rows) * 100 / len(rows) == pytest.approx(res["score"]) or name == "mmlu"
    medmcqa_rows = [json.loads(line) for line in (tmp_path / "items-medmcqa.jsonl").read_text().splitlines()]
    assert [r["id"] for r in medmcqa_rows] == ["id-1", "id-2"]
    assert results["mmlu"]["n"] == 3 and "stem" in results["mmlu"]


def test_evaluate_rejects_unknown_benchmark(tiny_model: Any, tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="valid benchmarks"):
        evaluate(tiny_model, tokenizer, ["nope"], None, None, 2, tmp_path)
