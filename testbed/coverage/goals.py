"""How much of the P2P code the testbed's own workloads reach, against the project's goals
(functions executed over functions measurable), as data.

    for g in judge_goals(coverage):
        print(g.line())     # "drivers/pci/p2pdma.c  20/24  83%  goal 80%  ok"

A goal names a file and, for a file where only part is P2P's business, the functions that
are (a name the kernel does not define is left out).  ``testbed coverage DIR`` prints them
for a run's or a matrix's coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import EXECUTED, UNTRACEABLE, Coverage


@dataclass(frozen=True)
class Goal:
    path: str
    percent: float
    what: str  # what the goal measures, for the table
    functions: tuple[str, ...] = ()  # empty: every function of the file


GOALS = (
    Goal("drivers/pci/p2pdma.c", 80, "P2PDMA core"),
    Goal("block/blk-mq-dma.c", 90, "block layer DMA mapping"),
    Goal("drivers/nvme/host/pci.c", 100, "NVMe map/unmap data, PRP/SGL setup, the CMB", (
        "nvme_map_data", "nvme_unmap_data", "nvme_pci_setup_data_prp",
        "nvme_pci_setup_data_sgl", "nvme_pci_setup_data_simple", "nvme_pci_prp_iter_next",
        "nvme_pci_prp_save_mapping", "nvme_pci_sgl_set_data", "nvme_pci_sgl_set_seg",
        "nvme_pci_use_sgls", "nvme_free_prps", "nvme_free_sgls", "nvme_unmap_iter",
        "nvme_pci_unmap_rq", "nvme_pci_first_desc_dma_addr", "nvme_map_cmb",
        "nvme_cmb_size", "nvme_cmb_size_unit", "nvme_pci_supports_pci_p2pdma")),
    Goal("drivers/iommu/dma-iommu.c", 100, "IOMMU two-step (dma_iova_*) and map_phys paths", (
        "dma_iova_try_alloc", "dma_iova_link", "__dma_iova_link", "dma_iova_sync",
        "dma_iova_unlink", "dma_iova_destroy", "dma_iova_free", "iommu_dma_map_phys",
        "iommu_dma_unmap_phys")),
)


@dataclass(frozen=True)
class GoalResult:
    goal: Goal
    executed: list[str]
    missed: list[str]  # measurable, not executed
    unmeasured: list[str]  # defined, but not traceable here

    @property
    def percent(self) -> float | None:
        n = len(self.executed) + len(self.missed)
        return 100.0 * len(self.executed) / n if n else None

    @property
    def met(self) -> bool:
        return self.percent is not None and self.percent >= self.goal.percent

    def line(self) -> str:
        pct = self.percent
        n = len(self.executed) + len(self.missed)
        return (f"{self.goal.path:28} {len(self.executed):3}/{n:<3} "
                f"{'-' if pct is None else f'{pct:.0f}%':>5}  goal {self.goal.percent:.0f}%  "
                f"{'ok' if self.met else 'BELOW'}  ({self.goal.what})"
                + (f"; not executed: {', '.join(self.missed)}" if self.missed else ""))


def judge_goals(cov: Coverage, goals: tuple[Goal, ...] = GOALS) -> list[GoalResult]:
    out = []
    for g in goals:
        f = cov.files.get(g.path)
        if f is None:
            continue
        names = [n for n in (g.functions or tuple(f.functions)) if n in f.functions]
        fs = [f.functions[n] for n in names]
        out.append(GoalResult(g, [x.name for x in fs if x.status == EXECUTED],
                              [x.name for x in fs if x.status not in (EXECUTED, UNTRACEABLE)],
                              [x.name for x in fs if x.status == UNTRACEABLE]))
    return out
