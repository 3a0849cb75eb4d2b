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


def test_job_run_ids_are_checked_before_they_reach_a_search_filter():
    assert cli.parse(["embed", "--job-run", "123456"]).job_run == "123456"
    assert cli.parse(["app-sample"]).command in cli.COMMANDS
    with pytest.raises(SystemExit):
        cli.parse(["embed", "--job-run", "1' or tags.x = '1"])
