"""The `mfp` command line: every subcommand documents its flags; user errors are one line, exit 2."""

import subprocess
import sys

import pytest

from mfp.eval.cli import build_parser, main


def _subcommands(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for sub_name, subsub in _subcommands(sub):
                    yield f"{name} {sub_name}", subsub


def test_every_flag_has_help_text():
    for name, sub in _subcommands(build_parser()):
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"`mfp {name}` flag {action.option_strings} has no help text"


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "mfp.eval.cli", "collect", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--episodes" in out.stdout and "--seed-start" in out.stdout


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["collect", "--task", "metaworld/nope", "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfp collect: error: unknown task 'metaworld/nope'") and "Traceback" not in err
    assert main(["collect", "--task", "metaworld/reach", "--episodes", "0", "--out", str(tmp_path / "y.zarr")]) == 2
    with pytest.raises(SystemExit):
        main(["collect"])  # argparse: missing required flags


def test_robot_and_head_choices_come_from_their_registries():
    from mfp.eval.robots import ROBOTS, RobotRequest, make_robot
    from mfp.policies.heads import head_names

    choices = {name: {a.dest: a.choices for a in sub._actions} for name, sub in _subcommands(build_parser())}
    assert tuple(choices["control"]["robot"]) == tuple(ROBOTS) == ("sim", "ros", "ros2")
    assert tuple(choices["train"]["head"]) == head_names()
    with pytest.raises(ValueError, match="unknown robot 'ros3': choose sim or ros or ros2"):
        make_robot("ros3", RobotRequest(task=None, rate_hz=10.0, seed=0, point_cloud=None))
