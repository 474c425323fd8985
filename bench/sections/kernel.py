"""Kernel profiles (issue 20's figures, measured by bench/kernel.py): cold builds, a
one-file change, the profile kernel's boot.  The cold builds take minutes:
``--skip kernel`` (or ``--skip-kernel``) leaves them out."""

from __future__ import annotations

from bench import Context, Section


def run(ctx: Context) -> list[str]:
    if ctx.args.skip_kernel:
        print("  skipped (--skip-kernel)")
        return []
    from kernel import kernel_figures  # bench/kernel.py: imports the kernel build code
    kernel_figures(ctx.work, ctx.args.runs)
    return []


def options(p) -> None:
    p.add_argument("--skip-kernel", action="store_true", help="the same as --skip kernel")


SECTION = Section("kernel", "kernel profiles (linux-source-7.3)", run, 40, options)
