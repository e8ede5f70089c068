"""The README's command examples and the CLI agree: every ``flowertune <command> --flag`` shown exists."""

from __future__ import annotations

import argparse
import re

from flowertune.cli import build_parser
from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.search(r"(?:^|\s)(flowertune\s+[a-z-]+.*)$", line)
            if m:
                commands.append(m.group(1).split(" > ")[0].split(" | ")[0])
    return commands


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_in_the_readme_examples_exists():
    subs = subparsers()
    commands = readme_commands()
    assert len(commands) >= 20  # the README shows the CLI in use
    wrong = []
    for cmd in commands:
        words = cmd.split()
        sub = words[1]
        if sub not in subs:
            wrong.append(f"{cmd}: no command {sub!r}")
            continue
        known = {opt for a in subs[sub]._actions for opt in a.option_strings}
        wrong += [f"{cmd}: {w}" for w in words[2:] if w.startswith("--") and w.split("=")[0] not in known]
    assert wrong == []


def test_the_help_texts_do_not_advertise_flags_that_do_not_exist():
    subs = subparsers()
    for name, parser in subs.items():
        text = parser.format_help()
        for cmd in re.findall(r"flowertune ([a-z-]+)([^\n`]*)", text):
            sub, rest = cmd
            if sub not in subs:
                continue
            known = {opt for a in subs[sub]._actions for opt in a.option_strings}
            bad = [w for w in re.findall(r"--[a-z][a-z-]*", rest) if w not in known]
            assert bad == [], (name, sub, bad)
