"""`python -m tandem.trainer digits ...`, the same as `tandem train digits ...`; handy under torchrun."""

from tandem.trainer.cli import train

if __name__ == "__main__":
    train(prog_name="tandem train")
