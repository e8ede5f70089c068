"""Loading data files and model names, and the errors users get for bad ones."""

import json

import pandas as pd
import pytest
import torch

from flowertune.config import ConfigError, DataConfig, ModelConfig
from flowertune.data.load import DataLoadError, load_local, load_partition, split_validation
from flowertune.models.load import load_model, quantization_config
from flowertune.models.source import ModelSourceError, resolve

ROWS = [{"instruction": "i", "input": f"q{i}", "output": f"a{i}"} for i in range(40)]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_local_files_of_every_kind(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    df = pd.DataFrame(ROWS)
    {".json": lambda: path.write_text(json.dumps(ROWS)), ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".csv": lambda: df.to_csv(path, index=False), ".parquet": lambda: df.to_parquet(path)}[suffix]()
    ds = load_local(str(path))
    assert len(ds) == 40 and set(ds.column_names) == {"instruction", "input", "output"}


def test_partition_and_validation_split_are_disjoint_and_seeded(tmp_path):
    path = tmp_path / "d.jsonl"
    pd.DataFrame(ROWS).to_json(path, orient="records", lines=True)
    cfg = DataConfig(name=str(path), validation_fraction=0.25)
    p0, p1 = load_partition(cfg, 0, 2), load_partition(cfg, 1, 2)
    assert not set(p0["input"]) & set(p1["input"]) and len(p0) + len(p1) == 40
    train, val = split_validation(p0, cfg)
    assert len(val) == 5 and not set(train["input"]) & set(val["input"])
    assert list(load_partition(cfg, 0, 2)["input"]) == list(p0["input"])


def test_shipped_sample_loads():
    assert len(load_local("sample:medical")) >= 300


def test_bad_data_inputs_have_clear_errors(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataLoadError, match="broken.json"):
        load_local(str(bad))
    with pytest.raises(DataLoadError, match="does not exist"):
        load_local(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataLoadError, match="unsupported"):
        load_local(str(tmp_path.joinpath("x.txt").absolute()) if tmp_path.joinpath("x.txt").write_text("a") else "")
    with pytest.raises(ConfigError, match="partition-id"):
        load_partition(DataConfig(), 5, 2)


def test_model_names_resolve_or_explain(tmp_path, tiny_model_dir):
    assert resolve(str(tiny_model_dir)).kind == "local"
    assert resolve("Qwen/Qwen2.5-7B-Instruct").kind == "hub"
    assert resolve("embedded").kind == "embedded"
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve(str(tmp_path / "m.gguf"))


def test_unreachable_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as exc:
        load_model(ModelConfig(name="nobody/does-not-exist-7b"))
    assert "nobody/does-not-exist-7b" in str(exc.value) and "local directory" in str(exc.value)


def test_quantization_needs_avx2_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.raises(ConfigError, match=r"model.quantization=4 needs a CUDA GPU or an x86 CPU with AVX2.*"
                                          r"Set model.quantization=0"):
        quantization_config(4, torch.float32, torch.device("cpu"))
