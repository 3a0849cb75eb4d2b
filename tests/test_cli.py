"""The `lookalike` command: argument parsing, --set overrides, config errors at start."""

from __future__ import annotations

import pytest

from lookalike import cli
from lookalike.config import ConfigError


def test_set_overrides_are_parsed_as_yaml_into_nested_sections():
    assert cli._overrides(["training.epochs=3", "index.params.hnsw.ef_search=64",
                           "evaluation.unseen_categories=[Bag, Coat]"]) == {
        "training": {"epochs": 3}, "index": {"params": {"hnsw": {"ef_search": 64}}},
        "evaluation": {"unseen_categories": ["Bag", "Coat"]}}
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        cli._overrides(["training.epochs"])


def test_every_command_parses_and_has_a_handler():
    for argv in (["ingest", "--source", "fashion-mnist"], ["tune", "--max-evals", "2"],
                 ["train", "--processes", "2"], ["evaluate"], ["embed"], ["build-index"],
                 ["package"], ["promote"], ["recommend", "--k", "5"], ["serve"],
                 ["pipeline", "--skip-tuning"], ["demo", "--no-pipeline"]):
        args = cli.parse(argv)
        assert args.command in cli.COMMANDS


def test_bad_setting_stops_with_exit_2_and_names_the_key(capsys):
    assert cli.main(["embed", "--set", "embedding.batch_size=lots"]) == 2
    assert "config error at 'embedding.batch_size'" in capsys.readouterr().err


def test_commands_run_too_early_say_what_to_run_first(tmp_path):
    """A newcomer's wrong order gets one line saying what to do, no traceback, a failing exit
    code (found by running each command on an empty home)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOOKALIKE_HOME": str(tmp_path / "home")}

    def run(*argv):
        done = subprocess.run([sys.executable, "-m", "lookalike.cli", *argv], env=env,
                              capture_output=True, text=True, timeout=300)
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        return done.returncode, done.stderr

    code, err = run("ingest", "--source", "folder")        # refused before Spark starts
    assert code == 2 and "needs a PATH" in err
    code, err = run("promote")
    assert code == 1 and "no 'challenger' alias: run `lookalike package` first" in err
    code, err = run("serve")                               # before a server that can only fail
    assert code == 1 and "no 'champion' yet" in err


def test_job_run_ids_are_checked_before_they_reach_a_search_filter():
    assert cli.parse(["embed", "--job-run", "123456"]).job_run == "123456"
    assert cli.parse(["app-sample"]).command in cli.COMMANDS
    with pytest.raises(SystemExit):
        cli.parse(["embed", "--job-run", "1' or tags.x = '1"])
