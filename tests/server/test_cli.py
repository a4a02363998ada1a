"""The `tandem` command itself: --version, help and defaults of every flag, one-line errors
(exit status 2) for missing or broken bundles, and the README quick start's ids."""

import argparse
import gzip
import importlib.metadata
import json
import re
from pathlib import Path

import pytest

from tandem.server.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _flags(parser, path=("tandem",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), action


def _shown(default) -> set[str]:
    """Ways a help text may show ``default``: 10,50,200 for a tuple, 10 for 10.0."""
    if isinstance(default, (tuple, list)):
        return {",".join(map(str, default))}
    return {str(default), f"{default:g}"} if isinstance(default, float) else {str(default)}


def test_every_flag_has_help_and_shows_its_default():
    missing = []
    for command, action in _flags(build_parser()):
        name = "/".join(action.option_strings) or action.dest
        text = action.help or ""
        if not text.strip():
            missing.append(f"{command} {name}: no help")
        elif (action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, bool)
              and not action.required and not any(d in text for d in _shown(action.default))):
            missing.append(f"{command} {name}: help does not show the default {action.default!r}")
    assert not missing, "\n".join(missing)


def test_every_subcommand_help_renders(capsys):
    commands = sorted({c.split(" ", 1)[1] for c, _ in _flags(build_parser()) if " " in c})
    assert {"search", "recommend", "similar", "record", "status", "reload", "get-item", "export"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exc:
            main([*command.split(), "--help"])
        assert exc.value.code == 0 and "usage: tandem" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tandem {importlib.metadata.version('tandem')}"


@pytest.fixture()
def broken_bundles(tmp_path):
    root = tmp_path / "broken"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "manifest.json").write_text("{")
    (root / "CURRENT").write_text("v1\n")
    return root


@pytest.mark.parametrize("argv", [
    ("eval", "--data", "{data}"),
    ("export", "--what", "items", "--out", "{tmp}/x.npy"),
    ("report", "--out", "{tmp}/report"),
])
@pytest.mark.parametrize("bundle", ["missing", "broken", "empty"])
def test_missing_or_broken_bundle_is_one_line_and_exit_2(argv, bundle, broken_bundles, tmp_path, capsys):
    path = {"missing": tmp_path / "nope", "broken": broken_bundles, "empty": tmp_path}[bundle]
    argv = [a.format(data=tmp_path, tmp=tmp_path) for a in argv]
    assert main([*argv, "--bundle", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"tandem {argv[0]}: error: ") and str(path) in err


def test_readme_quick_start_ids_exist_in_the_generated_shop(tmp_path):
    """The quick start generates a shop and then queries ids of it: they must be real ones, or the
    reader silently gets a cold start."""
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    quick = re.search(r"## Quick start\n(.*?)\n## ", (ROOT / "README.md").read_text(), re.S).group(1)
    gen = re.search(r"tandem generate --out \S+ --items (\d+) --users (\d+) --seed (\d+)", quick)
    assert gen, "the quick start no longer generates a shop with --items/--users/--seed"
    items, users, seed = map(int, gen.groups())
    generate(tmp_path, SyntheticConfig(items=items, users=users, seed=seed))
    with gzip.open(tmp_path / "items.jsonl.gz", "rt") as f:
        item_ids = {json.loads(line)["item_id"] for line in f}
    user_ids = set()
    with gzip.open(tmp_path / "events.jsonl.gz", "rt") as f:
        for line in f:
            user_ids.add(json.loads(line)["user_id"])
    used_users = set(re.findall(r"--user (\S+)", quick)) | set(re.findall(r"\bu\d{5,}\b", quick))
    used_items = set(re.findall(r"--item (\S+)", quick)) | set(re.findall(r"\bi\d{5,}\b", quick))
    assert used_users and used_items
    assert used_users <= user_ids, used_users - user_ids
    assert used_items <= item_ids, used_items - item_ids
    # the search-only quick start copies that shop's items: its item ids must be real too
    search_only = re.search(r"## Search-only quick start\n(.*?)\n## ", (ROOT / "README.md").read_text(), re.S).group(1)
    used_items = set(re.findall(r"--item (\S+)", search_only))
    assert used_items and used_items <= item_ids, used_items - item_ids
