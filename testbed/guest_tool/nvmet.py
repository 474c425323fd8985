"""The NVMe target's p2pmem setting (the in-kernel P2PDMA user's configuration path): a
namespace of a local block device told to use a provider's p2pmem, enabled and taken down.

    p2pdma-guest nvmet-p2pmem --device /dev/nvme1n1 --p2pmem 0000:03:00.0   # or "1": any

Writing ``p2pmem`` is parsed by ``pci_p2pdma_enable_store()`` and read back through
``pci_p2pdma_enable_show()``; enabling the namespace checks the provider with
``pci_p2pdma_distance()`` (or, for ``1``, looks for one with ``pci_p2pmem_find()``) and fails
with EINVAL when the kernel refuses the pair.  No transport port is made: nothing is
exported.
"""

import errno
import os
import time

CONFIGFS = "/sys/kernel/config"
NVMET = f"{CONFIGFS}/nvmet"


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"


def _setup():
    """None when the nvmet configfs tree is there (after modprobe and mount), else why."""
    import subprocess  # only here: modprobe and mount, once per boot
    if not os.path.isdir(NVMET):
        subprocess.run(["modprobe", "nvmet"], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
    if not os.path.isdir(NVMET) and not os.path.ismount(CONFIGFS):
        subprocess.run(["mount", "-t", "configfs", "none", CONFIGFS], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    if os.path.isdir(NVMET):
        return None
    return "no NVMe target in this kernel (CONFIG_NVME_TARGET, module nvmet)"


def nvmet_p2pmem(args):
    start = time.monotonic()
    why = _setup()
    if why:
        return {"stage": "setup", "error": why, "errno": None}
    sub = f"{NVMET}/subsystems/p2ptb-{os.getpid()}"
    ns = f"{sub}/namespaces/1"
    out = {"device": args.device, "p2pmem_written": args.p2pmem, "enabled": False,
           "errno": None, "error": None}
    made = []
    try:
        os.mkdir(sub)
        made.append(sub)
        _write(f"{sub}/attr_allow_any_host", "1")
        os.mkdir(ns)
        made.append(ns)
        _write(f"{ns}/device_path", args.device)
        try:
            _write(f"{ns}/p2pmem", args.p2pmem)
        except OSError as exc:
            out.update(stage="p2pmem", errno=exc.errno, error=f"p2pmem: {exc.strerror}")
            return out
        out["p2pmem_read"] = _read(f"{ns}/p2pmem")
        try:
            _write(f"{ns}/enable", "1")
            out["enabled"] = _read(f"{ns}/enable") == "1"
        except OSError as exc:
            out.update(errno=exc.errno, error=f"enable: {exc.strerror}",
                       errno_name=errno.errorcode.get(exc.errno or 0))
    except OSError as exc:
        out.update(stage="setup", errno=exc.errno, error=f"configfs: {exc}")
    finally:
        if out.get("enabled"):
            try:
                _write(f"{ns}/enable", "0")
            except OSError:
                pass
        for d in reversed(made):
            try:
                os.rmdir(d)
            except OSError:
                pass
        out["seconds"] = round(time.monotonic() - start, 3)
    return out
