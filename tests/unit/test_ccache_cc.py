"""testbed/kernel/ccache-cc: ccache for C, the compiler itself for what .incbin's a build
product (x86's piggy.S holds the compressed vmlinux: a ccache hit there put an old kernel
into a new bzImage)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from testbed.kernel.profile_build import CCACHE_CC


def fake_tools(d: Path) -> dict[str, str]:
    log = d / "calls"
    for name in ("ccache", "fakecc"):
        tool = d / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
                        + ('exec "$@"\n' if name == "ccache" else ""))
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{d}:{os.environ['PATH']}"}


def compile_(d: Path, env: dict[str, str], *args: str) -> list[str]:
    (d / "calls").unlink(missing_ok=True)
    subprocess.run([str(CCACHE_CC), "fakecc", *args], env=env, check=True, cwd=d)
    return (d / "calls").read_text().splitlines()


def test_assembler_and_incbin_sources_bypass_ccache(tmp_path):
    env = fake_tools(tmp_path)
    (tmp_path / "piggy.S").write_text('.incbin "arch/x86/boot/compressed/vmlinux.bin.gz"\n')
    (tmp_path / "configs.c").write_text('asm(".incbin \\"kernel/config_data.gz\\"");\n')
    (tmp_path / "p2pdma.c").write_text("int x;\n")
    assert compile_(tmp_path, env, "-c", "-o", "piggy.o", "piggy.S") == \
        ["fakecc -c -o piggy.o piggy.S"]
    assert compile_(tmp_path, env, "-c", "-o", "configs.o", "configs.c") == \
        ["fakecc -c -o configs.o configs.c"]
    # plain C (and the compiler probes Kbuild makes) go through ccache, arguments intact
    assert compile_(tmp_path, env, "-c", "-o", "p2pdma.o", "p2pdma.c") == \
        ["ccache fakecc -c -o p2pdma.o p2pdma.c", "fakecc -c -o p2pdma.o p2pdma.c"]
    assert compile_(tmp_path, env, "-x", "c", "/dev/null", "-E") == \
        ["ccache fakecc -x c /dev/null -E", "fakecc -x c /dev/null -E"]
