"""`python -m tandem.devexec`: run the local executor (see tandem.devexec.cli)."""

from tandem.devexec.cli import executor

if __name__ == "__main__":
    executor()
