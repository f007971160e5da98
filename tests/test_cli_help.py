"""The command's help: every option of every command says what it is and shows its default, and the
cache sizes --sink / --recent take seconds as the PackedCache node does."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

# defaults that depend on --resume (None in the parser): the help must still name them
RESUME_DEFAULTS = {"--width": "832", "--height": "480", "--seed": "0", "--steps": "1000,750,500,250",
                   "--shift": "5.0", "--chunk-frames": "4"}


def cli_module():
    import packforcing_core.cli.main as module          # imported when called: the module may move
    return module


def subcommands() -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    parser = cli_module().build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices), {c.dest: c.help for c in sub._choices_actions}


def shown(default) -> str:
    """A default as one types it: a list of timesteps comma-separated, nargs lists space-separated."""
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    if isinstance(default, list):
        return " ".join(map(str, default))
    return str(default)


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


def test_every_option_of_every_command_has_help_and_shows_its_default():
    commands, summaries = subcommands()
    assert set(commands) >= {"generate", "plan", "report", "tiny-assets", "train-compressor", "evaluate-compressor"}
    missing, wrong = [], []
    for name, parser in commands.items():
        assert summaries.get(name), f"{name} has no line in the command list"
        assert parser.description, f"{name} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            option = action.option_strings[0] if action.option_strings else action.dest
            text = expanded_help(parser, action)
            if not text.strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {option}")
                continue
            default = action.default
            if default in (None, False, [], argparse.SUPPRESS):
                if name == "generate" and option in RESUME_DEFAULTS and RESUME_DEFAULTS[option] not in text:
                    wrong.append(f"{name} {option}: {text!r} does not name {RESUME_DEFAULTS[option]}")
                continue
            if f"(default: {shown(default)})" not in text:
                wrong.append(f"{name} {option}: {text!r} does not show its default {shown(default)!r}")
    assert not missing, f"options without help: {missing}"
    assert not wrong, "\n".join(wrong)


def test_train_compressor_says_in_one_line_what_it_does():
    commands, summaries = subcommands()
    for text in (summaries["train-compressor"], commands["train-compressor"].description):
        assert "\n" not in text.strip() and "README" not in text, text
        assert "compressor" in text and "hr" in text and "self-distillation" in text, text


def test_help_through_the_command_lists_defaults_and_the_bank_device():
    out = subprocess.run([sys.executable, "-m", "packforcing_core", "generate", "--help"], capture_output=True,
                         text=True, check=True).stdout
    flat = re.sub(r"\s+", " ", out)
    for words in ("(default: bf16)", "(default: kv_pool)", "(default: 81)", "(default: affinity)",
                  "(default: cpu)", "--device", "--out"):
        assert words in flat, words
    assert re.search(r"--bank-device \{same,cpu\} [^-]*same[^-]*device", flat), flat


def plan(capsys, *extra) -> dict:
    main = cli_module().main
    assert main(["plan", "--frames", "81", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_sink_and_recent_take_seconds_as_the_node_does(capsys):
    in_frames = plan(capsys, "--sink", "4", "--recent", "8")
    assert plan(capsys, "--sink", "1s", "--recent", "2s") == in_frames         # 1 latent frame = 0.25 s
    assert plan(capsys, "--sink", "1.0s", "--recent", "2.00s") == in_frames
    assert plan(capsys, "--sink", "0") != in_frames
    main = cli_module().main
    for value, words in (("0.3s", "0.25 s"), ("1.5", "latent frames"), ("-1s", ">= 0"), ("nans", "seconds")):
        with pytest.raises(SystemExit):
            main(["plan", f"--sink={value}"])       # =: argparse reads -1s as an option otherwise
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--sink" in err and words in err, (value, err)
