"""Same items, same results? Re-run a finished code eval's extracted programs through the sandbox.

Usage::

    python benchmarks/sandbox_parity.py EVAL_DIR [--data-dir DIR] [--other-sandbox PATH/TO/sandbox.py]

``EVAL_DIR`` is a ``flowertune eval`` output directory with ``items-humaneval.jsonl`` and/or
``items-mbpp.jsonl``. Each item's program (built from its ``extracted`` code exactly as the benchmark does) runs
in this checkout's sandbox and, with ``--other-sandbox``, in another version of ``sandbox.py`` (e.g. the one
before a change: ``git show REV:flowertune/eval/sandbox.py > /tmp/old_sandbox.py``), in the same process on
the same machine. Prints the pass@1 with each, the eval's own recorded score, and every item whose status
differs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowertune.eval import sandbox
from flowertune.eval.benchmarks import humaneval, mbpp

BENCHES = {"humaneval": (humaneval, humaneval.LIMITS), "mbpp": (mbpp, mbpp.LIMITS)}


def _module(path: Path):
    spec = importlib.util.spec_from_file_location("other_sandbox", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["other_sandbox"] = mod
    spec.loader.exec_module(mod)
    return mod


def quick(data_dir: Path | None) -> int:
    import tempfile

    if data_dir is None:
        sys.exit("--quick needs the benchmark data: --data-dir or FLOWERTUNE_DATA_DIR")
    rows = humaneval.read_jsonl(humaneval.find_file(Path(data_dir), "humaneval", ("HumanEval.jsonl.gz",)))[:20]
    with tempfile.TemporaryDirectory() as tmp:
        items = [{"id": r["task_id"], "extracted": r["prompt"] + (r["canonical_solution"] if i < 10 else "    pass\n")}
                 for i, r in enumerate(rows)]
        (Path(tmp) / "items-humaneval.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
        (Path(tmp) / "results.json").write_text(json.dumps({"humaneval": {"score": 50.0}}))
        sys.argv = [sys.argv[0], tmp, "--data-dir", str(data_dir), "--other-sandbox", sandbox.__file__]
        return main()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dir", type=Path, nargs="?")
    p.add_argument("--data-dir", type=Path, default=os.environ.get("FLOWERTUNE_DATA_DIR"))
    p.add_argument("--other-sandbox", type=Path)
    p.add_argument("--quick", action="store_true",
                   help="a made-up eval of 20 HumanEval items (10 reference solutions, 10 empty bodies), this sandbox "
                        "against itself: the script runs (a test runs this)")
    a = p.parse_args()
    if a.quick:
        return quick(a.data_dir)
    if a.eval_dir is None:
        p.error("give EVAL_DIR (or --quick)")
    other = _module(a.other_sandbox) if a.other_sandbox else None
    print(f"this sandbox: {sandbox.isolation().describe()}")
    recorded = json.loads((a.eval_dir / "results.json").read_text())
    for name, (module, limits) in BENCHES.items():
        path = a.eval_dir / f"items-{name}.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        items = {it.id: it for it in module.load(a.data_dir)}
        programs = [module.program(row["extracted"], items[row["id"]]) for row in rows]
        runs = {}
        for label, mod in [("this", sandbox), *([("other", other)] if other else [])]:
            start = time.monotonic()
            lim = mod.Limits(**{k: getattr(limits, k) for k in ("wall_s", "memory_mb", "nproc", "file_mb")})
            progs = [mod.Program(pr.source, pr.language) for pr in programs]
            runs[label] = [r.status for r in mod.run_programs(progs, lim)]
            passed = sum(s == "passed" for s in runs[label])
            print(f"{name}: {label} sandbox: {passed}/{len(rows)} passed = {100 * passed / len(rows):.2f} "
                  f"({time.monotonic() - start:.1f} s)")
        print(f"{name}: recorded score {recorded.get(name, {}).get('score')}")
        if other:
            diff = [(row["id"], s1, s2) for row, s1, s2 in zip(rows, runs["this"], runs["other"]) if s1 != s2]
            print(f"{name}: items whose status differs: {len(diff)} {diff[:10]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
