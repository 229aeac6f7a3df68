"""`python -m gnorm_kernels.cli`: the `gnorm` command (used by torchrun)."""

from gnorm_kernels.cli.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
