"""exec: the user's own commands (--exec), with exit status, stdout and stderr recorded."""

from __future__ import annotations

from .base import Context, Record, Workload


class Exec(Workload):
    name = "exec"

    def run(self, ctx: Context) -> list[Record]:
        records = []
        for command in ctx.execs:
            res = ctx.guest.run(command, timeout=ctx.timeout)
            records.append(Record(
                name=self.name, command=command,
                exit_status=res.exit_status, stdout=res.stdout[-64000:],
                stderr=res.stderr[-64000:], seconds=round(res.seconds, 3),
                detail="timed out" if res.timed_out else f"exit status {res.exit_status}"))
        return records
