"""GPU models the simulator knows, with figures from their data sheets and typical nvidia-smi readings."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class GpuModel:
    key: str
    nvml_name: str  # what nvmlDeviceGetName returns
    memory_total_bytes: int
    power_limit_watts: float
    idle_power_watts: float
    full_load_power_watts: float  # at 100% utilization; real boards sit a little under their limit
    sm_clock_max_mhz: int
    sm_clock_idle_mhz: int
    idle_temperature_celsius: float
    full_load_temperature_celsius: float
    pcie_gen_max: int
    pcie_width_max: int
    page_retirement: bool  # Volta and older retire pages; Ampere and newer remap rows instead
    row_remapping: bool

    def power_watts(self, utilization_pct: float) -> float:
        """Board power as a function of utilization (linear between idle and full load)."""
        u = min(max(utilization_pct, 0.0), 100.0) / 100.0
        return self.idle_power_watts + (self.full_load_power_watts - self.idle_power_watts) * u

    def temperature_celsius(self, utilization_pct: float) -> float:
        u = min(max(utilization_pct, 0.0), 100.0) / 100.0
        return (
            self.idle_temperature_celsius
            + (self.full_load_temperature_celsius - self.idle_temperature_celsius) * u
        )


MODELS: dict[str, GpuModel] = {
    m.key: m
    for m in (
        GpuModel(
            "H100-SXM5-80GB",
            "NVIDIA H100 80GB HBM3",
            81559 * MIB,
            700.0,
            70.0,
            660.0,
            1980,
            345,
            32.0,
            72.0,
            5,
            16,
            page_retirement=False,
            row_remapping=True,
        ),
        GpuModel(
            "A100-SXM4-40GB",
            "NVIDIA A100-SXM4-40GB",
            40960 * MIB,
            400.0,
            55.0,
            380.0,
            1410,
            210,
            30.0,
            68.0,
            4,
            16,
            page_retirement=False,
            row_remapping=True,
        ),
        GpuModel(
            "V100-SXM2-32GB",
            "Tesla V100-SXM2-32GB",
            32768 * MIB,
            300.0,
            40.0,
            285.0,
            1530,
            135,
            33.0,
            70.0,
            3,
            16,
            page_retirement=True,
            row_remapping=False,
        ),
    )
}

# PCI bus numbers in the order an 8-GPU HGX board enumerates them.
PCI_BUSES = ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")


def pci_bus_id(slot: int) -> str:
    bus = PCI_BUSES[slot] if slot < len(PCI_BUSES) else f"{0xE0 + slot - len(PCI_BUSES):02x}"
    return f"00000000:{bus.upper()}:00.0"
