"""`python -m ice_tf train ...`: the same as the `ice-tf` command."""

from ice_tf.cli import main

if __name__ == "__main__":
    main()
