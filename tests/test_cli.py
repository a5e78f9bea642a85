"""The `ice-tf` command: flag files from anywhere, grouped help, one-line errors,
packaging (console command, flag files as package data, TensorFlow named when missing)."""

import configparser
import re
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from ice_tf.cli import experiment_flags, flagfiles, runner, seed_flags
from ice_tf import losses
from ice_tf.experiment.config import ExperimentConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}


def ice_tf_command(*args, cwd):
    """`python -m ice_tf ...` in `cwd`: (returncode, stdout, stderr without TF's noise)."""
    done = subprocess.run([sys.executable, "-m", "ice_tf", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)
    stderr = "\n".join(line for line in done.stderr.splitlines()
                       if "absl::InitializeLog" not in line and "oneDNN" not in line)
    return done.returncode, done.stdout, stderr


# ------------------------------------------------------------------------ flag files
def test_nested_flag_files_resolve_relative_to_the_including_file(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "common.flags").write_text("# shared\n--epochs=3\n\n// c-style\n--seed=7\n")
    (tmp_path / "base" / "run.flags").write_text("--flagfile=common.flags\n--epochs=5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = flagfiles.expand(["prog", f"--flagfile={tmp_path / 'base' / 'run.flags'}", "--loss=oe"],
                            cwd=elsewhere)
    assert argv == ["prog", "--epochs=3", "--seed=7", "--epochs=5", "--loss=oe"]


def test_shipped_names_and_repository_paths_work_from_any_directory(tmp_path):
    by_name = flagfiles.expand(["prog", "--flagfile=demo"], cwd=tmp_path)
    by_path = flagfiles.expand(["prog", "--flagfile=flags/demo.flags"], cwd=tmp_path)
    assert by_name == by_path
    assert "--in_dataset=embedded_fashion_mnist" in by_name and "--momentum=0.9" in by_name
    assert flagfiles.expand(["p", "--flagfile=method/ice"], cwd=tmp_path)[1] == "--loss=ice"


def test_the_search_path_variable_adds_folders(tmp_path, monkeypatch):
    (tmp_path / "mine.flags").write_text("--epochs=2\n")
    monkeypatch.setenv(flagfiles.SEARCH_PATH_ENV, str(tmp_path))
    assert flagfiles.expand(["p", "--flagfile=mine"], cwd="/") == ["p", "--epochs=2"]


def test_missing_and_cyclic_flag_files_are_one_line_errors(tmp_path):
    with pytest.raises(flagfiles.FlagFileError, match="'typo' not found .*ICE_TF_FLAGS_PATH"):
        flagfiles.expand(["p", "--flagfile=typo"], cwd=tmp_path)
    (tmp_path / "a.flags").write_text("--flagfile=b.flags\n")
    (tmp_path / "b.flags").write_text("--flagfile=a.flags\n")
    with pytest.raises(flagfiles.FlagFileError, match="include each other"):
        flagfiles.expand(["p", "--flagfile=a.flags"], cwd=tmp_path)
    assert flagfiles.expand(["p", "--", "--flagfile=x"], cwd=tmp_path) == ["p", "--", "--flagfile=x"]


def test_every_shipped_flag_file_includes_by_relative_path():
    for path in flagfiles.flag_dir().rglob("*.flags"):
        for line in path.read_text().splitlines():
            if line.startswith("--flagfile="):
                assert (path.parent / line.split("=", 1)[1]).is_file(), (path, line)


# ----------------------------------------------------------------------------- help
def test_every_config_field_has_a_help_group():
    grouped = [name for names in experiment_flags.GROUPS.values() for name in names]
    assert len(grouped) == len(set(grouped))
    for field in ExperimentConfig.__dataclass_fields__:
        if field not in experiment_flags.NOT_FLAGS:
            assert experiment_flags.group_of(field), field
    for flag in losses.hyperparameter_flags():  # each method's own, generated
        assert experiment_flags.group_of(flag) == "method", flag


def test_grouped_help_lists_the_project_flags_with_defaults():
    values = flags.FlagValues()
    experiment_flags.define_flags(flag_values=values)
    experiment_flags.define_run_flags(flag_values=values)
    text = runner.grouped_help(values, "Usage line.", "ice-tf train")
    headers = [line for line in text.splitlines() if line.endswith(" flags:")]
    assert headers == ["data flags:", "method flags:", "schedule flags:", "evaluation flags:",
                       "output flags:"]
    assert "--loss (default: 'ice')" in text and "--overwrite (default: false)" in text
    assert "--loss_weight (default: unset)" in text


def test_helpshort_from_another_directory(tmp_path):
    code, out, _ = ice_tf_command("train", "--helpshort", cwd=tmp_path)
    assert code == 0
    assert "data flags:" in out and "--in_dataset (default: 'embedded_fashion_mnist')" in out
    assert "Try --helpfull" not in out
    code, out, _ = ice_tf_command("evaluate", "--help", cwd=tmp_path)
    assert code == 0 and "evaluate flags:" in out and "--scores" in out


# ------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("args, expected", [
    (("--epochs=abc",), "error: flag --epochs=abc: invalid literal"),
    (("--loss_weight=-1",), "error: --loss_weight must be a finite number >= 0, got -1.0"),
    (("--loss=nope",), "error: --loss='nope' is not valid; choose one of: bce, ce"),
    (("--epoch=3",), "error: Unknown command line flag 'epoch'. Did you mean: epochs"),
    (("--flagfile=typo",), "error: flag file 'typo' not found"),
])
def test_a_bad_flag_is_one_line_naming_it(tmp_path, args, expected):
    code, out, err = ice_tf_command("train", "--flagfile=demo", "--dry_run", *args, cwd=tmp_path)
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and err.startswith(expected), err
    assert len(err) < 300


def test_seeds_are_one_definition_that_refuses_non_integers_and_repeats():
    flag_values = flags.FlagValues()
    seed_flags.define_seeds_flag("Seeds.", flag_values=flag_values)
    flag_values(["prog", "--seeds=3,1,2"])
    assert seed_flags.parsed_seeds(flag_values) == [3, 1, 2]
    for bad in ("1,x", "1.5", "", "1,1"):
        with pytest.raises(flags.IllegalFlagValueError,
                           match="non-empty list of distinct integers, e.g. 1,2,3"):
            flag_values(["prog", f"--seeds={bad}"])


@pytest.mark.parametrize("command", [
    ("ice-tf", "compare", "--flagfile=demo", "--dry_run"),
    ("scripts/analysis_table.py",),
])
def test_bad_seeds_stop_compare_and_the_scripts_in_one_line(tmp_path, command):
    if command[0] == "ice-tf":
        code, _, err = ice_tf_command(*command[1:], "--seeds=1,two", cwd=tmp_path)
    else:
        done = subprocess.run([sys.executable, str(REPO / command[0]), "--seeds=1,two",
                               f"--runs_dir={tmp_path}"], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=120)
        code, err = done.returncode, done.stderr
    assert code != 0 and "--seeds must be a non-empty list of distinct integers, e.g. 1,2,3." in err, err
    assert len([line for line in err.strip().splitlines() if "seeds" in line]) == 1, err


def test_unknown_command_and_overview(tmp_path):
    code, _, err = ice_tf_command("frob", cwd=tmp_path)
    assert code == 2 and "unknown command 'frob'; choose one of: train, evaluate" in err
    code, out, _ = ice_tf_command("--help", cwd=tmp_path)
    assert code == 0 and all(name in out for name in ("train", "evaluate", "export", "compare", "demo"))


def test_a_dry_run_from_another_directory_with_a_shipped_flag_file(tmp_path):
    code, out, err = ice_tf_command("train", "--flagfile=demo", "--dry_run", "--loss=oe",
                                    cwd=tmp_path)
    assert code == 0, err
    assert out.startswith("dry run OK")
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


# ------------------------------------------------------------------------ packaging
_HIDE_TENSORFLOW = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
"""


def test_without_tensorflow_the_import_error_names_the_extras(tmp_path):
    code = _HIDE_TENSORFLOW + (
        "import ice_tf.metrics, ice_tf.experiment.config, ice_tf.experiment.run_folder\n"
        "stored = ice_tf.experiment.config.ExperimentConfig.from_dict({'loss': 'oe', 'epochs': 3}).to_dict()\n"
        "assert ice_tf.experiment.run_folder.config_differences(stored, stored) == []\n"
        "import ice_tf.models\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith("ModuleNotFoundError: ice-tf needs TensorFlow")
    assert 'pip install "ice-tf[cpu]"' in last and '"ice-tf[gpu]"' in last
    code = _HIDE_TENSORFLOW + "from ice_tf.cli import main\nmain(['ice-tf', 'train'])\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: ice-tf needs TensorFlow")
    assert len(done.stderr.strip().splitlines()) == 1


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def test_setup_lists_every_package_and_ships_the_flag_files():
    config = _setup_cfg()
    listed = set(config["options"]["packages"].split())
    on_disk = {".".join(path.parent.relative_to(REPO).parts)
               for path in (REPO / "ice_tf").rglob("__init__.py")}
    assert on_disk | {"ice_tf.flagfiles"} == listed
    assert "ice_tf.flagfiles = flags" in config["options"]["package_dir"]
    patterns = config["options.package_data"]["ice_tf.flagfiles"].replace(",", " ").split()
    shipped = {p.relative_to(REPO / "flags") for pattern in patterns
               for p in (REPO / "flags").glob(pattern)}
    assert shipped == {p.relative_to(REPO / "flags") for p in (REPO / "flags").rglob("*.flags")}
    assert "ice-tf = ice_tf.cli:main" in config["options.entry_points"]["console_scripts"]


# ------------------------------------------------------------- documented commands
def _documented_commands():
    """Every `ice-tf <command> ...` line of README.md, BUILD.md, docs/ and the commands'
    own docstrings, with continuation lines joined."""
    sources = [REPO / "README.md", REPO / "BUILD.md", *sorted((REPO / "docs").rglob("*.md")),
               *sorted((REPO / "ice_tf" / "cli").glob("*.py")), *sorted((REPO / "flags").rglob("*.flags"))]
    found = []
    for source in sources:
        text = source.read_text().replace("\\\\\n", " ").replace("\\\n", " ")
        for line in text.splitlines():
            # A command in code: followed by flags, a comment, a backtick or the line's end.
            for match in re.finditer(r"ice-tf (\w+)((?: +--?[\w.=/:<>,+@-]*)*)(?=$|`| +#| +\"| *\)|')",
                                     line):
                found.append((source.name, match.group(1), match.group(2).split()))
    return found


def _known_flags():
    names = set(ExperimentConfig.__dataclass_fields__) | {"overwrite", "helpshort", "help", "helpfull",
                                                          "flagfile", "verbosity", "verbose",
                                                          runner.IMPORT_FLAG}
    names |= set(losses.hyperparameter_flags())
    for path in (REPO / "ice_tf" / "cli").glob("*.py"):
        names |= set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', path.read_text()))
    return names | {f"no{name}" for name in names}


def test_every_documented_command_names_real_commands_flags_and_flag_files(tmp_path):
    from ice_tf.cli import COMMANDS

    commands = _documented_commands()
    assert len(commands) > 30
    known = _known_flags()
    for source, command, args in commands:
        assert command in COMMANDS, (source, command)
        for arg in args:
            if not arg.startswith("--"):
                continue
            name, _, value = arg[2:].partition("=")
            if not name:
                continue
            assert name in known, (source, command, arg)
            placeholder = any(part in value for part in ("<", "...", "PATH", "runs/"))
            if name == "flagfile" and not placeholder:
                flagfiles.resolve(value, tmp_path)  # raises when it names no file


def test_the_demo_trains_the_baselines_tuned_on_validation(tmp_path):
    from ice_tf.cli import demo

    argv = flagfiles.expand(["p", "--flagfile=demo", f"--flagfile={demo.METHODS_FLAGFILE}"],
                            cwd=tmp_path)
    assert argv[-3:] == ["--methods=ce,ice", "--variant=oe:loss=oe,loss_weight=1.0",
                         "--variant=energy:loss=energy,margin_in=-10,margin_out=-3,loss_weight=0.1"]
    reference = flagfiles.expand(["p", "--flagfile=compare/demo_reference_baselines"], cwd=tmp_path)
    assert reference[1:] == [
        "--variant=oe_reference:loss=oe,loss_weight=0.5",
        "--variant=energy_reference:loss=energy,margin_in=-23,margin_out=-5,loss_weight=0.1"]
