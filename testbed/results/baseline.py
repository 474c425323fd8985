"""A previous run's results.json as the reference a later kernel is judged against
(``testbed bisect --baseline``), instead of the oracle.

What is compared, per judged record (workload, provider, client): the *observed*
verdict, and the observed map type when both runs observed one (a kernel without the
tracing the mechanism needs is judged on the verdict alone).  A judged record the
baseline does not have is judged by the oracle as usual.

    >>> base = Baseline(Path("r.json"), "switch-cmb", "7.3.4",
    ...                 {("p2p-copy", "nvme0", "nvme1"): Expected("ok", "bus-address")})
    >>> now = RunResult("switch-cmb", finished=True, workloads=[
    ...     Record("p2p-copy", "nvme0", "nvme1", predicted="ok", observed="rejected")])
    >>> differences(now, base)
    ['p2p-copy nvme0->nvme1: baseline ok, now rejected']
    >>> differences(now, None)
    ['p2p-copy nvme0->nvme1: predicted ok, observed rejected']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from ..errors import UsageError
from ..verdicts.record import Record
from .model import RunResult

Key = tuple[str, str, str]  # (workload, provider, client)


@dataclass(frozen=True)
class Expected:
    verdict: str
    map_type: str | None = None  # None: the baseline did not observe the mechanism


@dataclass
class Baseline:
    path: Path
    topology: str
    kernel: str  # the baseline kernel's release, for messages
    records: dict[Key, Expected] = field(default_factory=dict)

    def restricted(self, workloads: Collection[str],
                   pairs: Collection[tuple[str, str]] = ()) -> "Baseline":
        """Only the records of these workloads (and pairs, when given)."""
        keep = {k: v for k, v in self.records.items() if k[0] in workloads
                and (not pairs or (k[1], k[2]) in pairs)}
        return Baseline(self.path, self.topology, self.kernel, keep)


def key_of(r: Record) -> Key:
    return (r.name, r.provider or "", r.client or "")


def describe(key: Key) -> str:
    name, provider, client = key
    return f"{name} {provider}->{client}" if provider or client else name


def load_baseline(path: Path, option: str = "--baseline") -> Baseline:
    """Read a results.json written by ``testbed run`` (UsageError when it is not one or
    holds no judged record)."""
    try:
        data: Any = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{option} {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("workloads"), list) \
            or not isinstance(data.get("topology"), str):
        raise UsageError(f"{option} {path}: not a testbed results.json (no topology and "
                         "workloads)")
    records: dict[Key, Expected] = {}
    for w in data["workloads"]:
        if not isinstance(w, dict) or not isinstance(w.get("name"), str):
            raise UsageError(f"{option} {path}: a workload record without a name")
        observed = w.get("observed")
        if w.get("predicted") is None or not isinstance(observed, str):
            continue  # not judged
        map_type = w.get("observed_map_type")
        records[(w["name"], str(w.get("provider") or ""), str(w.get("client") or ""))] = \
            Expected(observed, map_type if isinstance(map_type, str) else None)
    if not records:
        raise UsageError(f"{option} {path}: holds no judged record"
                         + (f" (that run failed: {str(data['error']).splitlines()[0]})"
                            if data.get("error") else ""))
    kernel = data.get("kernel")
    release = kernel.get("release") if isinstance(kernel, dict) else None
    return Baseline(Path(path), data["topology"], str(release or "?"), records)


def differences(result: RunResult, baseline: Baseline | None) -> list[str]:
    """What differs from the baseline (or, without one, from the oracle), one line each;
    empty when every judged record is as expected."""
    out: list[str] = []
    current = {key_of(r): r for r in result.judged}
    if baseline is not None:
        for key, want in baseline.records.items():
            got = current.get(key)
            if got is None:
                out.append(f"{describe(key)}: baseline {want.verdict}, now missing")
            elif got.observed != want.verdict:
                out.append(f"{describe(key)}: baseline {want.verdict}, now {got.observed}")
            elif want.map_type and got.observed_map_type \
                    and want.map_type != got.observed_map_type:
                out.append(f"{describe(key)}: mechanism: baseline {want.map_type}, now "
                           f"{got.observed_map_type}")
    for key, r in current.items():
        if (baseline is None or key not in baseline.records) and not r.passed:
            out.append(f"{describe(key)}: {r.mismatch}"
                       + (" (not in the baseline: judged by the oracle)" if baseline else ""))
    return out
