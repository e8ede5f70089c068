"""Reports, submissions and sweeps read back from run directories written the way a run writes them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowertune.config import from_flat
from flowertune.federation.rundir import RunDir, read_config
from flowertune.layering import layer
from flowertune.report import write_report
from flowertune.report.methodology import methodology
from flowertune.report.plots import figures
from flowertune.report.submission import IncompleteRun, build_submission, missing
from flowertune.report.tables import reproduce_command

MB = 1024**2


def fake_rows(rounds: int, eval_every: int = 2) -> list[dict]:
    rows = [{"round": 0, "eval_loss": 3.5, "bytes_init": 1000, "wall_s": 1.0, "errors": []}]
    for r in range(1, rounds + 1):
        rows.append({
            "round": r, "lr": 1e-3 / r, "train_loss": 2.0 / r, "eval_loss": (3.0 / r if r % eval_every == 0 else None),
            "clients": 2, "replies": 2, "failures": 0, "rejected": [], "errors": [], "tries": 1,
            "bytes_down": 3 * MB, "bytes_up": 3 * MB + 17, "bytes_round": 6 * MB + 17,
            "bytes_cumulative": r * (6 * MB + 17), "bytes_eval_down": 0, "client_tokens_per_s": 100.0 + r,
            "client_model_loads": 1.0, "client_rss_mb": 500.0, "client_peak_rss_mb": 600.0 + r, "round_s": 10.0 + r,
            "wall_s": 1.0 + 11 * r,
        })
    return rows


def make_run(tmp_path: Path, preset: str = "finance", rounds: int = 3, finished: bool = True,
             results: dict | None = None, **user) -> Path:
    flat, _ = layer(preset, {"num-server-rounds": rounds, "run.output-dir": str(tmp_path / "run"), **user})
    run = RunDir.create(from_flat(flat))
    for row in fake_rows(rounds):
        run.log(row)
    if finished:
        arrays = {"base_model.model.layers.0.q_proj.lora_A.weight": np.ones((2, 4), np.float32)}
        run.finish(arrays, {"peft_type": "LORA", "r": 2}, {"rounds": rounds, "wall_s": 42.0, "eval_loss_first": 3.5,
                                                            "eval_loss_last": 1.0})
    if results is not None:
        (run.path / "eval").mkdir()
        (run.path / "eval" / "results.json").write_text(json.dumps(results))
        for name in results:
            (run.path / "eval" / f"items-{name}.jsonl").write_text('{"id": 0}\n')
    return run.path


FINANCE = {"fpb": {"score": 70.5, "n": 1212, "n_total": 1212, "limit": None, "protocol": "p", "seconds": 3.0},
           "fiqa": {"score": 60.25, "n": 304, "n_total": 304, "limit": None, "protocol": "p", "seconds": 2.0},
           "tfns": {"score": 50.0, "n": 2388, "n_total": 2388, "limit": None, "protocol": "p", "seconds": 1.0}}


def table_after(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading``."""
    part = text.split(heading, 1)[1]
    lines = [ln for ln in part.splitlines() if ln.startswith("|")]
    rows, started = [], False
    for ln in part.splitlines():
        if ln.startswith("|"):
            started = True
            rows.append([c.strip() for c in ln.strip("|").split("|")])
        elif started:
            break
    assert lines
    return [r for r in rows if not set("".join(r)) <= set("-")]


def test_report_tables_plots_and_methodology_match_the_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, results=FINANCE, **{"model.lora.peft-lora-r": 4, "model.lora.use-dora": True,
                                                 "strategy.name": "fedprox", "strategy.proximal-mu": 0.01})
    md = write_report(run).read_text()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # per-round table: every number equals metrics.jsonl (at its printed precision)
    table = table_after(md, "## Per-round metrics")
    assert table[0][:4] == ["Round", "LR", "Train loss", "Eval loss"]
    assert len(table) == 1 + len(rows)
    for cells, row in zip(table[1:], rows):
        assert int(cells[0]) == row["round"]
        for col, key, scale in ((2, "train_loss", 1), (3, "eval_loss", 1), (8, "bytes_cumulative", MB)):
            assert (cells[col] == "-") == (row.get(key) is None)
            if row.get(key) is not None:
                assert float(cells[col]) == pytest.approx(row[key] / scale, abs=6e-3)
    # leaderboard table: scores and average from results.json, comm cost from the last cumulative bytes
    board = table_after(md, "## Evaluation Results")
    assert board[0] == ["", "FPB", "FIQA", "TFNS", "Avg", "Comm. Costs"]
    assert board[1] == ["score", "70.50", "60.25", "50.00", f"{(70.5 + 60.25 + 50) / 3:.2f}",
                        f"{rows[-1]['bytes_cumulative'] / MB:,.2f} MB"]
    assert board[2][:4] == ["n items", "1212", "304", "2388"]
    # methodology from the resolved config
    cfg = read_config(run)
    assert "- **DoRA Configuration**:" in md and "  - Rank (r): `4`" in md
    assert f"  - Alpha: `{cfg['model.lora.peft-lora-alpha']}`" in md
    assert "- **Strategy**: `FedProx` (proximal mu `0.01`)" in md
    assert f"  - Total number of rounds: `{cfg['num-server-rounds']}`" in md
    assert f"    - Maximum LR: `{cfg['train.learning-rate-max']}`" in md
    assert "- **Quantization**: 4-bit NF4" in md  # the finance preset's base
    for line in methodology(cfg):
        assert line in md
    # the HTML page renders the same markdown: its tables hold the same cells
    page = (run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<td>70.50</td>" in page and 'src="plots/loss.png"' in page


def test_report_figures_plot_exactly_the_recorded_points(tmp_path: Path) -> None:
    run = make_run(tmp_path, rounds=4)
    write_report(run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    figs = figures(rows)
    loss_lines = {ln.get_label(): ln for ln in figs["loss"].axes[0].get_lines()}
    train = loss_lines["train loss (clients' mean)"]
    assert list(train.get_xdata()) == [1, 2, 3, 4]
    assert list(train.get_ydata()) == pytest.approx([r["train_loss"] for r in rows[1:]])
    evals = loss_lines["held-out eval loss"]
    assert list(evals.get_xdata()) == [0, 2, 4] and evals.get_linestyle() == "None"  # sparse: points, no line
    comm_ax, cum_ax = figs["communication"].axes
    assert len(comm_ax.patches) == 2 * 4  # down and up bars per round
    assert [p.get_height() for p in comm_ax.patches[:4]] == pytest.approx([3.0] * 4)
    assert list(cum_ax.get_lines()[0].get_ydata()) == pytest.approx([r["bytes_cumulative"] / MB for r in rows[1:]])
    speed, memory = figs["clients"].axes
    assert list(speed.get_lines()[0].get_ydata()) == pytest.approx([101, 102, 103, 104])
    assert list(memory.get_lines()[0].get_ydata()) == pytest.approx([601, 602, 603, 604])
    for name in ("loss", "communication", "clients"):
        with Image.open(run / "plots" / f"{name}.png") as im:
            im.verify()
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300


def test_a_stopped_run_still_gets_a_report_that_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, finished=False)
    RunDir(run).stopped("round 4: fewer than strategy.min-train-nodes=2 usable client updates")
    md = write_report(run).read_text()
    assert "**Stopped** after round 3: round 4: fewer than" in md and "No evaluation yet" in md


def test_the_reproduce_command_resolves_to_the_same_config(tmp_path: Path) -> None:
    from flowertune.commands.run import parse_overrides, resolve_cli

    user = {"model.name": "embedded", "model.lora.target-modules": "q_proj,k_proj,v_proj",
            "train.learning-rate-max": 1e-3, "data.prompt-frame": "finance", "strategy.fraction-train": 0.2,
            "model.lora.use-dora": True, "num-supernodes": 10, "static.dataset.name": "/data/my file.jsonl",
            "model.dtype": "auto", "run.client-worker": "on"}
    for preset, recipe in (("finance", None), (None, "code-phi4-mini-dora"), ("medical", "code-phi4-mini-dora")):
        flat, _ = layer(preset, {**user, "run.output-dir": str(tmp_path / "r")}, recipe)
        cmd = reproduce_command(flat)
        argv = shlex.split(cmd)
        assert argv[:2] == ["flowertune", "run"]
        p = argv.index("--preset") if "--preset" in argv else None
        r = argv.index("--recipe") if "--recipe" in argv else None
        n = argv.index("--num-supernodes") if "--num-supernodes" in argv else None
        flags = {i for j in (p, r, n) if j is not None for i in (j, j + 1)}
        overrides = parse_overrides([a for i, a in enumerate(argv[2:], 2) if i not in flags])
        if n is not None:
            overrides["num-supernodes"] = int(argv[n + 1])
        again = resolve_cli(argv[p + 1] if p else None, overrides, str(tmp_path / "r"),
                            recipe=argv[r + 1] if r else None).to_flat()
        assert again == from_flat(flat).to_flat() | {"run.preset-applied": True}, cmd


def test_submit_refuses_incomplete_runs_naming_what_is_missing(tmp_path: Path) -> None:
    unfinished = make_run(tmp_path / "a", finished=False)
    gaps = missing(unfinished)
    assert any("no final adapter" in g for g in gaps) and any("no evaluation" in g and "--suite finance" in g
                                                              for g in gaps)
    no_eval = make_run(tmp_path / "b")
    with pytest.raises(IncompleteRun, match=r"no evaluation \(eval/results.json\): `flowertune eval --run"):
        build_submission(no_eval, tmp_path / "sub-b")
    assert not (tmp_path / "sub-b").exists()
    partial = make_run(tmp_path / "c", results={"fpb": FINANCE["fpb"], "fiqa": {**FINANCE["fiqa"], "n": 8, "limit": 8}})
    gaps = missing(partial)
    assert any("lacks tfns" in g for g in gaps) and any("fiqa on 8 of 304" in g for g in gaps)
    assert missing(partial, allow_limit=True) == [g for g in gaps if "lacks" in g]


def test_submission_folder_of_a_complete_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, results=FINANCE)
    out = build_submission(run, tmp_path / "sub")
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["items-fiqa.jsonl", "items-fpb.jsonl",
                                                                "items-tfns.jsonl", "results.json"]
    readme = (out / "README.md").read_text()
    for heading in ("## Methodology", "### Training Loss Visualization", "### Evaluation Results",
                    "### Communication Budget", "## Running the challenge", "## Running the evaluation"):
        assert heading in readme
    assert "| score | 70.50 | 60.25 | 50.00 |" in readme and "Not a leaderboard score" not in readme
    assert re.search(r"flowertune run --preset finance .*num-server-rounds=3", readme)
    import tomllib

    toml = tomllib.loads((out / "run-config.toml").read_text())
    assert toml["num-server-rounds"] == 3 and toml["preset"] == "finance" and "run.output-dir" not in toml
    with pytest.raises(IncompleteRun, match="not empty"):
        build_submission(run, out)


def test_a_dp_run_states_its_epsilon_in_the_report_and_the_submission(tmp_path: Path) -> None:
    flat, _ = layer("finance", {"num-server-rounds": 5, "run.output-dir": str(tmp_path / "run"),
                                "strategy.dp.mode": "server-fixed", "strategy.dp.noise-multiplier": 1.5,
                                "strategy.dp.clipping-norm": 0.2, "strategy.dp.target-epsilon": 9.0})
    run = RunDir.create(from_flat(flat))
    for row in fake_rows(3):
        if row["round"]:
            row.update({"dp_epsilon": 2.0 * row["round"] + 0.123, "dp_delta": 1e-5, "dp_releases": row["round"],
                        "dp_noise_multiplier": 1.5})
        run.log(row)
    reason = "round 4 would take ε past strategy.dp.target-epsilon=9 (ε=6.123 at δ=1e-05 after 3 releases)"
    run.stopped(reason)
    run.finish({"base_model.model.layers.0.q_proj.lora_A.weight": np.ones((2, 4), np.float32)},
               {"peft_type": "LORA", "r": 2}, {"rounds": 3, "wall_s": 42.0, "eval_loss_first": 3.5,
                                                "eval_loss_last": 1.0, "stopped": reason, "dp_epsilon": 6.123})
    md = write_report(run.path).read_text()
    assert "**Finished**: 3 rounds" in md and f"ended before num-server-rounds: {reason}" in md
    assert ("**Privacy**: client-level DP (server-fixed, noise multiplier 1.5, clipping norm 0.2): ε = 6.123 at "
            "δ = 1e-05 after 3 releases (round 3)") in md
    rounds = table_after(md, "ε (DP)")
    assert [r[-1] for r in rounds[1:]] == ["2.12", "4.12", "6.12"]
    (run.path / "eval").mkdir()
    (run.path / "eval" / "results.json").write_text(json.dumps(FINANCE))
    for name in FINANCE:
        (run.path / "eval" / f"items-{name}.jsonl").write_text('{"id": 0}\n')
    readme = (build_submission(run.path, tmp_path / "sub") / "README.md").read_text()
    assert "### Privacy" in readme and "ε = 6.123 at δ = 1e-05" in readme and "no amplification by sampling" in readme
    plain = make_run(tmp_path / "plain", results=FINANCE)
    assert "Privacy" not in write_report(plain).read_text() and "ε (DP)" not in write_report(plain).read_text()
    flat, _ = layer("finance", {"num-server-rounds": 2, "run.output-dir": str(tmp_path / "secure"),
                                "strategy.secagg.mode": "secagg+"})
    secure = RunDir.create(from_flat(flat))
    for row in fake_rows(2):
        secure.log(row)
    assert ("**Privacy**: secure aggregation (SecAgg+, Flower's protocol): the server saw only the sum of each "
            "round's updates (no differential privacy: no ε)") in write_report(secure.path).read_text()


def test_a_dp_sgd_run_states_its_record_level_epsilon_in_the_report_and_the_submission(tmp_path: Path) -> None:
    flat, _ = layer("finance", {"num-server-rounds": 3, "run.output-dir": str(tmp_path / "run"),
                                "train.dp-sgd.noise-multiplier": 0.9, "train.dp-sgd.sample-rate": 0.04,
                                "train.dp-sgd.clipping-norm": 0.5})
    run = RunDir.create(from_flat(flat))
    for row in fake_rows(3):
        if row["round"]:
            row.update({"dp_record_epsilon": 1.5 * row["round"], "dp_record_delta": 1e-5, "train_loss": None,
                        "dp_record_local_rounds": row["round"], "dp_record_epsilon_round": 1.5})
        run.log(row)
    run.finish({"base_model.model.layers.0.q_proj.lora_A.weight": np.ones((2, 4), np.float32)},
               {"peft_type": "LORA", "r": 2}, {"rounds": 3, "wall_s": 42.0, "eval_loss_first": 3.5,
                                                "eval_loss_last": 1.0, "dp_record_epsilon": 4.5})
    md = write_report(run.path).read_text()
    assert ("**Privacy**: record-level DP (DP-SGD in each node: noise multiplier 0.9, clipping norm 0.5, sample rate "
            "0.04, ") in md and "ε = 4.5 at δ = 1e-05 for the node that trained most (3 local rounds, round 3)" in md
    rounds = table_after(md, "ε (records)")
    assert [r[-1] for r in rounds[1:]] == ["1.5", "3", "4.5"] and "ε (DP)" not in md
    assert all(r[2] == "-" for r in rounds[1:])  # no train loss under DP-SGD
    (run.path / "eval").mkdir()
    (run.path / "eval" / "results.json").write_text(json.dumps(FINANCE))
    for name in FINANCE:
        (run.path / "eval" / f"items-{name}.jsonl").write_text('{"id": 0}\n')
    readme = (build_submission(run.path, tmp_path / "sub") / "README.md").read_text()
    assert "### Privacy" in readme and "record-level DP" in readme and "ε = 4.5 at δ = 1e-05" in readme
    flat, _ = layer("finance", {"num-server-rounds": 2, "run.output-dir": str(tmp_path / "secure"),
                                "strategy.secagg.mode": "secagg+", "train.dp-sgd.noise-multiplier": 0.9})
    secure = RunDir.create(from_flat(flat))
    secure.log(fake_rows(1)[0])
    line = next(ln for ln in write_report(secure.path).read_text().splitlines() if ln.startswith("**Privacy**"))
    assert "(no client-level DP); record-level DP" in line and "no ε" not in line


def test_methodology_says_how_lora_factors_were_combined_and_at_which_ranks() -> None:
    from flowertune.config import resolve

    plain = methodology(resolve({}).to_flat())
    assert not any("LoRA factors" in line or "nodes train at ranks" in line for line in plain)
    lines = methodology(resolve({"strategy.aggregation": "exact", "model.lora.peft-lora-r": 16,
                                 "model.lora.node-ranks": "4,8,16"}).to_flat())
    assert ("- **Strategy**: `FedAvg`; LoRA factors: the weighted mean of the nodes' products B·A, re-projected onto "
            "the rank by SVD (`exact`)") in lines
    assert any(line.startswith("  - Rank (r): `16` (the global adapter's; nodes train at ranks `4,8,16`")
               for line in lines)
    assert any("A frozen at its initialisation" in line
               for line in methodology(resolve({"strategy.aggregation": "freeze-a"}).to_flat()))


def test_push_to_hub_is_refused_offline_before_anything_is_built(tmp_path: Path, capsys, monkeypatch) -> None:
    from flowertune.cli import main

    run = make_run(tmp_path, results=FINANCE)
    out = tmp_path / "sub"

    def refused(*extra: str) -> str:
        assert main(["submit", str(run), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()  # nothing built
        return err

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE is set" in refused("--push-to-hub", "me/adapter")
    assert "not a Hub repository id" in refused("--push-to-hub", "me/bad name!")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert "no Hugging Face token" in refused("--push-to-hub", "me/adapter")
    # a token, but no Hub to answer (a closed local port stands in for no network)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_dummy")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.hf_api.constants.ENDPOINT", "http://127.0.0.1:9")
    assert "did not answer" in refused("--push-to-hub", "me/adapter")
    assert "--private only applies" in refused("--private")
    unevaluated = make_run(tmp_path / "b", results=None)
    assert main(["submit", str(unevaluated), "--out", str(out), "--push-to-hub", "me/adapter"]) == 2
    assert "cannot be submitted yet" in capsys.readouterr().err and not out.exists()


def test_what_the_hub_gets_is_a_loadable_adapter_with_a_model_card(tmp_path: Path) -> None:
    from flowertune.report.hub import stage

    run = make_run(tmp_path, results=FINANCE)
    folder = build_submission(run, tmp_path / "sub")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    staged = stage(folder, "finance", tmp_path / "staged")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "config.json", "run-config.toml",
            "eval/results.json"} <= set(staged)
    assert any(p.startswith("plots/") for p in staged) and "metrics.jsonl" not in staged
    assert not any(p.startswith("eval/items-") for p in staged)  # per-item generations stay in the folder
    card = (tmp_path / "staged" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: \"Qwen/Qwen2.5-7B-Instruct\"\n")
    assert "- finance" in card and "### Evaluation Results" in card
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before  # the folder is unchanged


def test_the_model_card_names_a_hub_base_model_only(tmp_path: Path) -> None:
    from flowertune.report.hub import model_card

    assert 'base_model: "Qwen/Qwen2.5-7B-Instruct"' in model_card("x", {"model.name": "Qwen/Qwen2.5-7B-Instruct"}, None)
    for local in ("embedded", str(tmp_path), "/models/llama-3.1-8b", "model.gguf"):
        assert "base_model" not in model_card("x", {"model.name": local}, "finance")
