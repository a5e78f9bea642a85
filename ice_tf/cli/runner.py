"""How every ice-tf command starts: flag files expanded, help, flags parsed, errors in one line.

`run(main, doc)` replaces `absl.app.run(main)`:
1. `--flagfile=` arguments are expanded by `flagfiles.expand` (nested files relative to the
   including file; shipped names such as `demo` from any directory);
2. `--help`, `-h` and `--helpshort` print the command's usage and its flags grouped as
   data, method, schedule, evaluation, output (`experiment_flags.GROUPS`) and the command's
   own, each with its default (`--helpfull` is absl's full list);
3. a flag absl rejects (unknown name, bad type) is one line, `error: flag --epochs=abc: ...`,
   exit status 1, as are the user errors `main` raises (`experiment_flags.one_line_errors`).

Example:
  if __name__ == "__main__":
      runner.run(main, __doc__)
"""

from __future__ import annotations

import os
import sys
import textwrap

from absl import app, flags

from ice_tf.cli import experiment_flags, flagfiles, quiet

HELP_ARGS = ("-h", "-help", "--help", "-helpshort", "--helpshort", "-?")
_FOREIGN_MODULES = ("absl", "tensorflow", "keras", "tensorboard", "tensorflow_datasets")


def _fail(text):
    sys.stderr.write(f"error: {' '.join(text.split())}\n")
    sys.exit(1)


def _project_flags(flag_values):
    """The flags a command defines (its own and the experiment flags), not absl's."""
    found = {}
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if module.startswith(_FOREIGN_MODULES):
            continue
        for flag in module_flags:
            found[flag.name] = flag
    return found


def _describe(flag):
    default = flag.default_as_str if flag.default is not None else "unset"
    if isinstance(flag, flags.BooleanFlag):
        default = str(bool(flag.default)).lower()
    help_text = textwrap.fill(flag.help or "", width=88, initial_indent="      ",
                              subsequent_indent="      ")
    return f"  --{flag.name} (default: {default})\n{help_text}"


def grouped_help(flag_values, doc="", command=""):
    """The text `--helpshort` prints: the usage from `doc`, then the project's flags by group.

    Example:
      print(grouped_help(flags.FLAGS, __doc__, "ice-tf train"))
    """
    project = _project_flags(flag_values)
    sections = {group: [] for group in experiment_flags.GROUPS}
    own = []
    for name in sorted(project):
        group = experiment_flags.group_of(name)
        (sections[group] if group else own).append(project[name])
    parts = [doc.strip(), ""] if doc else []
    if own:
        parts.append(f"{command or 'command'} flags:")
        parts += [_describe(flag) for flag in own]
        parts.append("")
    for group, members in sections.items():
        if members:
            parts.append(f"{group} flags:")
            order = experiment_flags.group_members(group)
            ordered = sorted(members, key=lambda f: order.index(f.name))
            parts += [_describe(flag) for flag in ordered]
            parts.append("")
    parts.append("Flag files: --flagfile=PATH or a shipped name (demo, method/ice, ...); "
                 "--helpfull lists every flag, absl's too; --verbose shows TensorFlow's start-up lines.")
    return "\n".join(parts) + "\n"


def parse(argv, flag_values=flags.FLAGS, doc="", command=""):
    """Expands flag files, answers --help/--helpshort, parses; returns the remaining
    arguments (absl's contract). Exits with status 1 and one line on a bad flag.

    Example:
      parse(["ice-tf train", "--flagfile=demo", "--loss=ice"])  # ['ice-tf train']
    """
    try:
        argv = flagfiles.expand(argv)
    except flagfiles.FlagFileError as error:
        _fail(str(error))
    argv = [arg for arg in argv if arg != quiet.VERBOSE_FLAG]  # taken at import (quiet.py)
    if any(arg in HELP_ARGS or arg.startswith("--helpshort=") for arg in argv[1:]):
        sys.stdout.write(grouped_help(flag_values, doc, command))
        sys.exit(0)
    try:
        return flag_values(argv)
    except flags.Error as error:
        _fail(f"{str(error).strip().splitlines()[0]} (--helpshort lists the flags)")


def run(main, doc="", argv=None, command=None):
    """Runs a command's `main` as `absl.app.run` would, through `parse` and with user
    errors as one line (`experiment_flags.one_line_errors`).

    Example:
      runner.run(main, __doc__)
    """
    argv = list(sys.argv if argv is None else argv)
    command = command or argv[0]
    app.run(experiment_flags.one_line_errors(main), argv=argv,
            flags_parser=lambda args: parse(args, flags.FLAGS, doc, command))


IMPORTS_ENV = "ICE_TF_IMPORTS"
IMPORT_FLAG = "import"


def modules_to_import(argv, environ=None):
    """The modules a command imports before it defines its flags: each `--import=MODULE`
    of `argv` (flag files expanded) and those of $ICE_TF_IMPORTS (comma separated).

    Example:
      modules_to_import(["ice-tf train", "--import=my_losses", "--loss=squared_oe"])
      # ['my_losses']
    """
    environ = os.environ if environ is None else environ
    found = [name.strip() for name in environ.get(IMPORTS_ENV, "").split(",") if name.strip()]
    argv = list(argv)
    for index, arg in enumerate(argv):
        if arg.startswith(f"--{IMPORT_FLAG}="):
            found.append(arg.split("=", 1)[1])
        elif arg == f"--{IMPORT_FLAG}" and index + 1 < len(argv):
            found.append(argv[index + 1])
    return list(dict.fromkeys(name for name in found if name))


def import_user_modules(modules):
    """Imports `modules` (the current directory first on the path, as `python -m` has it),
    so that what they register (a loss with its hyperparameters, a backbone, a dataset)
    is known before the flags are defined. A module that fails is one `error:` line.

    Example:
      import_user_modules(["my_losses"])  # then --loss=squared_oe is a choice
    """
    from ice_tf.experiment import config  # no TensorFlow

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        config.import_modules(modules)
    except ValueError as error:
        _fail(str(error))


def command(define_flags, main, doc):
    """A command module's `run(argv=None)`: imports the user's modules (`--import`,
    $ICE_TF_IMPORTS), defines its flags (once), then `run`s `main`.

    Example:
      run = runner.command(define_flags, main, __doc__)   # in ice_tf/cli/train.py
      run(["ice-tf train", "--flagfile=demo", "--dry_run"])
    """

    def run_command(argv=None):
        argv = list(sys.argv if argv is None else argv)
        try:
            expanded = flagfiles.expand(argv)
        except flagfiles.FlagFileError as error:
            _fail(str(error))
        import_user_modules(modules_to_import(expanded))
        if IMPORT_FLAG not in flags.FLAGS:
            flags.DEFINE_multi_string(
                IMPORT_FLAG, [], "A Python module to import first (repeatable; also "
                f"${IMPORTS_ENV}, comma separated): a loss it registers is a --loss choice with "
                "its own hyperparameter flags.")
        define_flags()
        run(main, doc, expanded)  # flag files read once

    run_command.__doc__ = ("Runs the command with `argv` (default: sys.argv): its flags are "
                           "defined, flag files expanded, and user errors printed in one line.")
    return run_command


__all__ = ["run", "command", "parse", "grouped_help", "HELP_ARGS", "modules_to_import",
           "import_user_modules", "IMPORTS_ENV"]
