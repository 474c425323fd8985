"""vfio-revoke: the provider's BAR, exported as a dma-buf and mapped into the client's
iommufd IOAS, goes away while mapped; the mapping must go with it.

After a verified transfer through the mapping, the CMB gets a sentinel and one trigger
takes the exporter's memory away:

- ``decoding``: memory decoding cleared in the provider's command register (through
  VFIO's config region);
- ``reset``: VFIO_DEVICE_RESET of the provider (a function-level reset);
- ``close``: the provider's device closed (its mmap unmapped first: the VMA holds the
  file), the dma-buf still imported by iommufd;
- ``unplug`` (``--control FILE``, run in the background by the host): the host removes
  the provider with QMP; the kernel asks for the device back through the request
  eventfd, the tool closes it and the removal completes.

Then the client reads into the IOVA (bounded): the mapping must be gone — an IOMMU fault
in the kernel log, the CMB still holding the sentinel, the command failing or timing
out — with no WARNING or BUG.  The exporter is restored (decoding on, device reopened,
re-plugged) and a new export mapped at the same IOVA must carry a verified transfer.
Every step is timed and bounded; the devices go back to nvme at the end.
"""

import json
import os
import select
import time
from typing import Any

from . import trace, vfiobind, vfiotrace
from .dio import error_text, step, verify_step
from .kmsg import Kmsg
from .pattern import BLOCK, DEVICE_FILL, pattern
from .unvme import Controller, NvmeError, NvmeTimeout
from .usage import UsageError
from .vfio import PCI_COMMAND_MEMORY, errno_name
from .vfionvme import kernel_view, not_nvme
from .vfiop2p import CMB_BAR, bar_range, hotplug_slot, seed_namespace, unsupported
from .vfiosession import BAR_IOVA, Refused, Session

TRIGGERS = ("decoding", "reset", "close", "unplug")
ATTEMPT_TIMEOUT = 5.0  # the client's read into a revoked IOVA
FAULT_QUIET = 5.5  # the IOMMU fault printk is rate limited (5 s): space the attempts
FAULT_WAIT = 2.0  # the fault is printed from the IOMMU's interrupt, after the attempt
WAIT_REQUEST = 90.0  # unplug: the kernel's request for the device
WAIT_GONE = 60.0
WAIT_BACK = 120.0  # unplug: the host's device_add and nvme's probe


class Exporter:
    """The provider's side: its VFIO device, an mmap of its CMB (for checks), the
    dma-buf mapped at BAR_IOVA."""

    def __init__(self, session, bdf, window):
        self.session, self.bdf, self.window = session, bdf, window
        self.dev: Any = None
        self.cmb: Any = None
        self.mapped = False

    def open(self):
        self.dev = self.session.device(self.bdf)
        self.cmb, _ = self.dev.map_region(CMB_BAR, self.window)

    def export(self):
        """Unmap what is left of the last mapping, export the BAR, map it; a step."""
        start = time.monotonic()
        out = {}
        if self.mapped:
            out["unmapped_old"] = self.session.space.unmap(BAR_IOVA, self.window)
            self.mapped = False
        fd = self.dev.dma_buf(CMB_BAR, 0, self.window)
        try:
            self.session.space.map_file(fd, 0, self.window, BAR_IOVA)
        finally:
            os.close(fd)  # the IOAS holds its own reference
        self.mapped = True
        return step(True, time.monotonic() - start, self.window, **out)

    def close(self):
        """Close the device (the CMB mmap first: a VMA keeps the file open)."""
        if self.dev is not None:
            self.cmb = None
            self.dev.close()
            self.session.forget(self.bdf)
            self.dev = None


def _transfer(ctrl, ex, lba, size, expected):
    """A verified read of the seeded range into the mapped CMB."""
    ex.cmb[:size] = b"\xa5" * size
    start = time.monotonic()
    try:
        ctrl.read(lba, BAR_IOVA, size)
        io = step(True, time.monotonic() - start, size)
    except (NvmeError, NvmeTimeout) as exc:
        io = step(False, time.monotonic() - start, 0, error=str(exc))
    check = verify_step(ex.cmb[:size], expected, time.monotonic())
    return {"read": io, "verify": check, "ok": io["ok"] and check["ok"]}


def _attempt(ctrl, lba, size):
    """The client's read into the revoked IOVA: ok, an error status, or a timeout."""
    start = time.monotonic()
    try:
        ctrl.read(lba, BAR_IOVA, size, timeout=ATTEMPT_TIMEOUT)
        out: dict = {"completed": True, "ok": True}
    except NvmeError as exc:
        out = {"completed": True, "ok": False, "status": exc.to_json()}
    except NvmeTimeout as exc:
        out = {"completed": False, "ok": False, "timeout": str(exc)}
        try:  # the command may still be outstanding: start the controller afresh
            ctrl.enable()
            out["client_reenabled"] = True
        except (NvmeError, NvmeTimeout) as exc2:
            out["client_reenabled"] = f"failed: {exc2}"
    out["seconds"] = round(time.monotonic() - start, 3)
    return out


def _trigger(trigger, ex):
    start = time.monotonic()
    out: dict
    if trigger == "decoding":
        out = {"command": hex(ex.dev.command(clear_bits=PCI_COMMAND_MEMORY))}
    elif trigger == "reset":
        ex.dev.reset()
        out = {"command": hex(ex.dev.config_read(0x04, 2))}
    elif trigger == "close":
        ex.close()
        out = {"closed": True}
    else:
        raise UsageError(f"unknown trigger {trigger}")
    out["seconds"] = round(time.monotonic() - start, 3)
    return out


def _restore_exporter(trigger, ex):
    if trigger == "decoding":
        return {"command": hex(ex.dev.command(set_bits=PCI_COMMAND_MEMORY))}
    if trigger == "close":
        ex.open()
        return {"reopened": True}
    return {"command": hex(ex.dev.config_read(0x04, 2))}


def revoke_cycle(trigger, ex, ctrl, lba, size, expected, kmsg, state, bars, observe):
    """One trigger: sentinel, trigger, attempt, checks, restore, a new export."""
    doc: dict = {}
    sentinel = bytes([DEVICE_FILL]) * size
    if trigger != "reset":  # after a reset the function's state is new: write it after
        ex.cmb[:size] = sentinel
    wait = state["last_attempt"] + FAULT_QUIET - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    if observe:
        trace.clear()
    kmsg.lines()
    doc["trigger"] = _trigger(trigger, ex)
    if trigger == "reset":
        ex.cmb[:size] = sentinel
    doc["attempt"] = _attempt(ctrl, lba, size)
    state["last_attempt"] = time.monotonic()
    doc["kernel_log"] = kmsg.lines_until("fault", FAULT_WAIT)
    if observe:
        doc["mechanism"] = trace.read(extra_bars=bars)
    doc["restore"] = _restore_exporter(trigger, ex)
    doc["cmb_untouched"] = bytes(ex.cmb[:size]) == sentinel
    doc["after"] = _after(ctrl, ex, lba, size, expected, bars, observe)
    return doc


def _after(ctrl, ex, lba, size, expected, bars, observe):
    """A new export of the restored exporter, mapped at the same IOVA, and a transfer."""
    try:
        after: dict = {"export": ex.export()}
    except OSError as exc:
        return {"export": step(False, 0, 0, exc=exc), "ok": False}
    after.update(_transfer(ctrl, ex, lba, size, expected))
    if observe:
        after["mechanism"] = trace.read(extra_bars=bars)
    return after


def _say(path, event, **fields):
    with open(path, "a") as f:
        f.write(json.dumps({"event": event, "t": round(time.monotonic(), 3), **fields}) + "\n")


def unplug_cycle(ex, ctrl, lba, size, expected, kmsg, control, bars, observe):
    """The host removes the provider; answer the kernel's request, try the IOVA, wait for
    the host to put it back, export again."""
    doc: dict = {}
    efd = ex.dev.request_eventfd()
    if observe:
        trace.clear()
    kmsg.lines()
    _say(control, "ready")
    ready, _, _ = select.select([efd], [], [], WAIT_REQUEST)
    if not ready:
        doc["stage"] = "request"
        doc["error"] = f"the kernel did not ask for the device within {WAIT_REQUEST:.0f} s"
        return doc
    doc["request"] = {"count": int.from_bytes(os.read(efd, 8), "little")}
    _say(control, "request")
    ex.close()  # this is what lets the removal go on
    start = time.monotonic()
    while os.path.exists(f"/sys/bus/pci/devices/{ex.bdf}") and \
            time.monotonic() - start < WAIT_GONE:
        time.sleep(0.1)
    doc["removed"] = {"gone": not os.path.exists(f"/sys/bus/pci/devices/{ex.bdf}"),
                      "seconds": round(time.monotonic() - start, 3)}
    doc["attempt"] = _attempt(ctrl, lba, size)
    doc["kernel_log"] = kmsg.lines()
    if observe:
        doc["mechanism"] = trace.read(extra_bars=bars)
    _say(control, "attempted")
    start = time.monotonic()
    while not (kernel_view(ex.bdf) or {}).get("block") and \
            time.monotonic() - start < WAIT_BACK:
        time.sleep(0.2)
    doc["replugged"] = {"back": bool((kernel_view(ex.bdf) or {}).get("block")),
                        "seconds": round(time.monotonic() - start, 3)}
    if not doc["replugged"]["back"]:
        doc["stage"] = "replug"
        doc["error"] = f"{ex.bdf} did not come back on nvme within {WAIT_BACK:.0f} s"
        return doc
    bind = vfiobind.bind([ex.bdf])  # a new pci_dev: its driver_override is new too
    if bind["problems"]:
        doc["stage"], doc["error"] = "rebind", "; ".join(bind["problems"])
        return doc
    ex.open()
    doc["after"] = _after(ctrl, ex, lba, size, expected, bars, observe)
    return doc


def vfio_revoke(args):
    vfiobind.exit_on_signals()
    doc = _revoke(args)
    if args.control:  # the host waits for this line (unplug)
        _say(args.control, "done", doc=doc)
    return doc


def _revoke(args):
    size, offset = args.size, args.offset
    if not args.provider or not args.client or not args.trigger:
        raise UsageError("--provider, --client and --trigger are required")
    if size <= 0 or size % BLOCK or size > (1 << 20) or offset % BLOCK:
        raise UsageError(f"--size must be a multiple of {BLOCK} up to 1M, --offset a "
                         f"multiple of {BLOCK}")
    if "unplug" in args.trigger and (args.trigger != ["unplug"] or not args.control):
        raise UsageError("--trigger unplug runs alone, with --control FILE")
    window = 1 << 20
    cmb = bar_range(args.provider, CMB_BAR)
    doc: dict = {"provider": args.provider, "client": args.client, "triggers": {}}
    if cmb is None or cmb[1] - cmb[0] + 1 < window:
        doc.update(stage="provider", error=f"{args.provider} has no BAR{CMB_BAR} of "
                   f"{window} bytes (a CMB)", errno=None)
        return doc
    why = not_nvme(args.client) or unsupported("iommufd") or \
        (hotplug_slot(args.provider) if "unplug" in args.trigger else None)
    if why:
        doc.update(stage="unsupported", error=why, errno=None)
        return doc
    bars = [(args.provider, CMB_BAR, cmb[0], cmb[1])]
    view = kernel_view(args.client)
    expected = pattern(args.seed, offset // BLOCK, size // BLOCK)
    if view and view.get("block"):
        doc["seed"], expected = seed_namespace(view, offset, size, args.seed)
    doc["trace"] = vfiotrace.setup() if args.observe else None
    kmsg = Kmsg()
    try:
        with Session("iommufd", [args.provider, args.client],
                     args.allow_unsafe_interrupts) as s:
            doc["session"] = s.report
            ex = Exporter(s, args.provider, window)
            ex.open()
            ctrl = Controller(s.device(args.client), s.space, s.arena(size + (1 << 20)))
            try:
                ctrl.enable()
                lba = offset // ctrl.lba_size
                first = {"export": ex.export()}
                first.update(_transfer(ctrl, ex, lba, size, expected))
                doc["before"] = first
                if not first["ok"]:
                    doc.update(stage="before", error="the first transfer through the "
                               "dma-buf mapping did not verify", errno=None)
                    return doc
                state = {"last_attempt": 0.0}
                for trigger in args.trigger:
                    if trigger == "unplug":
                        doc["triggers"][trigger] = unplug_cycle(
                            ex, ctrl, lba, size, expected, kmsg, args.control, bars,
                            args.observe)
                    else:
                        doc["triggers"][trigger] = revoke_cycle(
                            trigger, ex, ctrl, lba, size, expected, kmsg, state, bars,
                            args.observe)
            finally:
                ctrl.close()
    except Refused as exc:
        doc.update(stage=exc.stage, error=exc.reason, errno=exc.errno)
    except (NvmeError, NvmeTimeout) as exc:
        doc.update(stage="client", error=str(exc), errno=None)
    except OSError as exc:
        doc.update(stage="vfio", error=error_text(exc), errno=exc.errno,
                   errno_name=errno_name(exc.errno))
    finally:
        kmsg.close()
    return doc
