"""`ice-tf train` from a source checkout: `python scripts/train.py --helpshort`.

The command lives in ice_tf/cli/train.py; an installed ice-tf runs it as `ice-tf train`.
"""

from ice_tf.cli import train

if __name__ == "__main__":
    train.run()
