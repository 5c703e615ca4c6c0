"""Kernel-log lines the NVIDIA driver prints for XID errors, as the simulator writes them."""

from __future__ import annotations

from slurmgpu.gpu.xid import short_bus_id

_TEXT = {
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU",
    63: "Row remapping event",
    64: "Row remapping failure",
    74: "NVLink Error",
    79: "GPU has fallen off the bus.",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    119: "Timeout after 6s of waiting for RPC response from GPU0 GSP!",
}


def xid_message(pci_bus_id: str, code: int, pid: str = "'<unknown>'") -> str:
    text = _TEXT.get(code, "Unknown error")
    return f"NVRM: Xid (PCI:{short_bus_id(pci_bus_id)}): {code}, pid={pid}, name=<unknown>, {text}"
