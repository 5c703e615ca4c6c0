"""How slurmgpu treats each XID code (the driver's error codes in the kernel log).

Source: NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors, "Analyzing Xid Errors with the Xid Catalog": the
"Resolution Bucket (Immediate Action)" column, RESET_GPU / RESTART_BM / CONTACT_SUPPORT mapped to drain,
RESTART_APP / IGNORE mapped to application or no action) and the dynamic page retirement and row remapping guides
(XID 48, 63, 64, 92, 94, 95). Codes the table does not know are treated as warnings: seen, recorded, not drained.
Sites extend or override the table in the config ([health] xid_drain, xid_warn, xid_ignore).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

XidClass = Literal["drain", "warn", "app", "ignore"]


@dataclass(frozen=True)
class XidInfo:
    code: int
    action: XidClass
    meaning: str


_TABLE: dict[int, tuple[XidClass, str]] = {
    # The GPU or its memory is unusable until reset, reboot or repair: take the node out of service.
    46: ("drain", "GPU stopped processing (reset required)"),
    48: ("drain", "uncorrectable double-bit ECC error"),
    56: ("drain", "display engine error"),
    57: ("drain", "error programming video memory interface"),
    58: ("drain", "unstable video memory interface detected"),
    62: ("drain", "internal micro-controller halt"),
    64: ("drain", "page retirement or row remapping failed to record"),
    74: ("drain", "NVLink error"),
    79: ("drain", "GPU has fallen off the bus"),
    95: ("drain", "uncontained ECC error"),
    109: ("drain", "context switch timeout"),
    110: ("drain", "security fault"),
    119: ("drain", "GSP RPC timeout"),
    120: ("drain", "GSP error"),
    121: ("drain", "C2C link error"),
    136: ("drain", "link training failure"),
    140: ("drain", "unrecovered ECC error"),
    143: ("drain", "GPU initialization failure"),
    154: ("drain", "GPU recovery action: reset or reboot required"),
    # Degraded but usable, or an event that another check follows up (pending row remap, page retirement).
    61: ("warn", "internal micro-controller breakpoint/warning"),
    63: ("warn", "row remapping or page retirement event (reset to activate)"),
    92: ("warn", "high single-bit ECC error rate"),
    94: ("warn", "contained ECC error"),
    122: ("warn", "SPI PMU RPC read failure"),
    123: ("warn", "SPI PMU RPC write failure"),
    137: ("warn", "NVLink FLA privilege error"),
    144: ("warn", "NVLink SAW error"),
    145: ("warn", "NVLink RLW error"),
    149: ("warn", "NVLink NETIR error"),
    # Caused by the application (bad kernel, illegal address, killed process): no action on the node.
    13: ("app", "graphics engine exception (application fault)"),
    31: ("app", "GPU memory page fault (application fault)"),
    43: ("app", "GPU stopped processing (application reset)"),
    45: ("app", "preemptive cleanup after a previous error or a killed process"),
    68: ("app", "video processor exception"),
    69: ("app", "graphics engine class error"),
}


def classify(
    code: int,
    *,
    drain: tuple[int, ...] = (),
    warn: tuple[int, ...] = (),
    ignore: tuple[int, ...] = (),
) -> XidInfo:
    """The action for an XID code; the config's lists win over the shipped table."""
    action, meaning = _TABLE.get(code, ("warn", "not in slurmgpu's table"))
    if code in ignore:
        action = "ignore"
    elif code in drain:
        action = "drain"
    elif code in warn:
        action = "warn"
    return XidInfo(code, action, meaning)
