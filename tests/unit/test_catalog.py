"""The catalog of pluggable names: every entry resolves, names are checked without importing their modules,
and validating a config or listing keys imports neither Flower nor torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flowertune import catalog
from flowertune.config import ConfigError, from_flat
from flowertune.registry import Registry
from tests.conftest import REPO

KINDS = {
    "STRATEGIES": {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum",
                   "multikrum", "bulyan"},
    "PARTITIONERS": {"iid", "dirichlet"},
    "FORMATS": {"medical", "finance", "code", "general-nlp", "generic"},
    "FRAMES": {"auto", "chat", "alpaca", "finance", "qa", "code"},
    "CODECS": {"fp32", "fp16", "delta-fp16", "delta-int8", "delta-int4", "delta-int3", "delta-int2", "delta-topk-int8"},
    "SINKS": {"tensorboard", "mlflow", "wandb"},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_entry_resolves_to_its_implementation(kind):
    registry = getattr(catalog, kind)
    assert set(registry.names()) == KINDS[kind]
    for name in registry.names():
        assert registry.get(name) is not None, name
    if kind == "CODECS":
        assert all(registry.get(n)().name == n for n in registry.names() if n != "delta-topk-int8")
    if kind == "FRAMES":
        assert all(registry.get(n).name == n for n in registry.names())


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("strategy.name", "fedsgd", "fedadam"), ("data.partitioner", "pathological", "dirichlet"),
    ("data.format", "legal", "general-nlp"), ("data.prompt-frame", "llama", "alpaca"),
    ("wire.codec", "int8", "delta-int8"), ("run.metric-sinks", "tensorboard,neptune", "wandb"),
])
def test_an_unknown_name_is_refused_naming_the_valid_ones(key, value, valid):
    with pytest.raises(ConfigError, match=valid):
        from_flat({key: value})


def test_a_lazy_entry_is_imported_on_first_get_only():
    reg: Registry[object] = Registry("thing")
    reg.add_lazy("json-dumps", "json:dumps")
    reg.add_lazy("missing", "flowertune.no_such_module:x")
    assert "json-dumps" in reg and reg.names() == ["json-dumps", "missing"]
    assert reg.get("json-dumps") is json.dumps
    with pytest.raises(ModuleNotFoundError):
        reg.get("missing")
    with pytest.raises(KeyError, match="valid things: json-dumps, missing"):
        reg.get("other")
    with pytest.raises(ValueError, match="twice"):
        reg.add("json-dumps", object())
    with pytest.raises(ValueError, match="module:attr"):
        reg.add_lazy("bad", "json.dumps")


HEAVY = ("torch", "flwr", "transformers", "datasets", "peft", "ray")


@pytest.mark.parametrize("argv", [["keys"], ["run", "--dry-run", "--recipe", "code-phi4-mini-dora",
                                             "strategy.name=fedadam", "wire.codec=delta-int3"]])
def test_keys_and_a_dry_run_import_neither_flower_nor_torch(argv):
    code = ("import io, contextlib, sys\nfrom flowertune.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        rc = main({argv!r})\n    except SystemExit as e:\n        rc = e.code\n"
            f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         timeout=120).stdout.split()
    assert out[0] in ("0", "None") and " ".join(out[1:]) == "[]", out


def test_the_wire_package_is_numpy_only():
    code = "import sys, flowertune.wire\nprint(sorted(m for m in ('flwr', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         timeout=60).stdout.strip()
    assert out == "[]"
