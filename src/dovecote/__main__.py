"""`python -m dovecote ...` behaves like the `dovecote` command."""

from dovecote.cli import main

if __name__ == "__main__":
    main(prog_name="dovecote")
