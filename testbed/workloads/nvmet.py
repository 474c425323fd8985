"""nvmet-p2pmem: the NVMe target's p2pmem setting, the configuration path of the kernel's
own P2PDMA user (nvmet), judged per pair.

For every pair, a target namespace on the client's block device is told to use the
provider's p2pmem and enabled: the kernel checks the pair with ``pci_p2pdma_distance()``,
so enabling works when the oracle says the pair may do P2P (``ok``, and ``iommu-fault``:
the distance check does not know QEMU's vIOMMU routing) and fails when it says
``rejected``.  The target resolves the block device to its PCI device through the
device's parents: a namespace under native NVMe multipath (Debian's default) is a
multipath head whose parent is the NVMe subsystem, "not a PCI device", so every pair is
refused there, and the prediction says so.  One more record per client asks for any
provider (``p2pmem=1``:
``pci_p2pmem_find()``), informational.  It runs the setting only: no port is made, nothing
is exported, and the namespace is taken down again.  Needs nvmet (CONFIG_NVME_TARGET): a
kernel without it gets one record, ``unsupported (why)``, not judged (as hmm-p2p does).
"""

from __future__ import annotations

from ..verdicts.observe import pull_dmesg
from .base import Context, Record, Workload, need_bdf
from .judged import client_device, pair_record, selected_pairs


class NvmetP2pmem(Workload):
    name = "nvmet-p2pmem"
    judged = True

    def run(self, ctx: Context) -> list[Record]:
        devices = ctx.block_devices()
        records: list[Record] = []
        clients: dict[str, str] = {}
        heads: dict[str, bool] = {}
        for provider, client in selected_pairs(ctx):
            rec = pair_record(ctx, self.name, provider, client)
            if rec.predicted == "iommu-fault":
                rec.predicted = "ok"
                rec.reason = (f"{rec.reason}; the target's distance check passes (the fault "
                              "would come with DMA, which this setting does not do)")
            dev = client_device(ctx, devices, client)
            if dev is None:
                rec.observed, rec.detail = "error", f"{client}: no block device in the guest"
                records.append(rec)
                continue
            if dev not in heads:
                heads[dev] = multipath_head(ctx, dev)
            if heads[dev] and rec.predicted == "ok":
                rec.predicted = "rejected"
                rec.reason = (f"{dev} is a native NVMe multipath head: the target walks its "
                              "parents to a PCI device and finds the NVMe subsystem instead "
                              "(\"not a PCI device\")")
            clients.setdefault(client, dev)
            records.append(self._one(ctx, rec, dev, need_bdf(ctx, provider)))
            if records[-1].observed == "unsupported":  # no target: the same for every pair
                return [Record(name=self.name, detail=f"unsupported ({records[-1].detail})")]
        for client, dev in clients.items():
            rec = Record(name=self.name, provider="any", client=client)
            records.append(self._one(ctx, rec, dev, "1"))
        return records

    def _one(self, ctx: Context, rec: Record, dev: str, p2pmem: str) -> Record:
        ctx.dmesg_delta()
        data, res = ctx.tool(["nvmet-p2pmem", "--device", dev, "--p2pmem", p2pmem])
        dmesg = pull_dmesg(ctx.dmesg_delta())
        rec.dmesg, rec.seconds, rec.data = dmesg, round(res.seconds, 3), data or {}
        if not data or data.get("stage") == "setup":
            rec.observed = "unsupported" if data and data.get("stage") == "setup" else "error"
            rec.detail = (data or {}).get("error") or res.describe()[:300]
        elif data.get("enabled"):
            rec.observed = "ok"
            rec.detail = f"namespace enabled with p2pmem {data.get('p2pmem_read')}"
        elif data.get("errno") == 22:  # EINVAL: the kernel refused the pair
            rec.observed = "rejected"
            rec.detail = f"enable refused: {data.get('error')}"
        else:
            rec.observed = "error"
            rec.detail = str(data.get("error"))
        if rec.predicted is None:  # the "any provider" record is informational
            rec.observed = None if rec.observed in ("ok", "rejected") else rec.observed
            rec.detail = f"p2pmem=1 (any provider): {rec.detail}"
        return rec


def multipath_head(ctx: Context, dev: str) -> bool:
    """Is the block device a native multipath head (its sysfs parent an nvme-subsys)?"""
    block = dev.rsplit("/", 1)[-1]
    res = ctx.guest.run(["readlink", "-f", f"/sys/block/{block}/device"], timeout=30)
    return "nvme-subsys" in res.stdout
