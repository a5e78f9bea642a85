"""The `--seeds` flag: one definition for `ice-tf compare` and the scripts that read its
runs (`scripts/table2.py`, `calibration.py`, `analysis_table.py`, ...). No TensorFlow.

A bad value stops the parse with one line (absl's validator), before any work starts.

Example:
  define_seeds_flag("Seeds; each variant runs once per seed.")
  ...                      # after parsing:
  parsed_seeds()           # [1, 2, 3] for --seeds=1,2,3
"""

from __future__ import annotations

from absl import flags

INVALID = "--seeds must be a non-empty list of distinct integers, e.g. 1,2,3."


def _integers(values):
    if not values or not all(value.strip().lstrip("-").isdigit() for value in values):
        return False
    return len({int(value) for value in values}) == len(values)  # 1,1 would count one run twice


def define_seeds_flag(help_text, default=("1",), flag_values=flags.FLAGS):
    """Defines `--seeds` (a comma-separated list) with a validator that refuses
    anything but distinct integers.

    Example:
      define_seeds_flag("The seed<k> folders read under --runs_dir.", default=("1",))
    """
    flags.DEFINE_list("seeds", list(default), help_text, flag_values=flag_values)
    flags.register_validator("seeds", _integers, INVALID, flag_values=flag_values)


def parsed_seeds(flag_values=flags.FLAGS):
    """The parsed `--seeds` as integers, in the order given.

    Example:
      seeds = parsed_seeds()  # [1, 2, 3]
    """
    return [int(value) for value in flag_values.seeds]
