/* SPDX-License-Identifier: GPL-2.0 */
/*
 * hmm_p2p_test: the user interface of the testbed's HMM P2P mapping test module.
 *
 * A process opens /dev/hmm_p2p_test and asks, with HMM_P2P_IOC_MAP, that a range of
 * its own address space be mirrored for a PCI device as an on-demand-paging driver
 * does: hmm_range_fault() under an mmu_interval_notifier, then hmm_dma_map_alloc()
 * and hmm_dma_map_pfn() per page.  read() then returns one struct hmm_p2p_page per
 * page.  HMM_P2P_IOC_UNMAP unmaps every page with hmm_dma_unmap_pfn() and drops the
 * mirror; read() afterwards returns the table with the unmap results.  Closing the
 * file does the same as HMM_P2P_IOC_UNMAP.
 *
 * The ioctl numbers encode the structure's size, so a tool built for another layout
 * gets ENOTTY rather than garbage.
 */
#ifndef HMM_P2P_TEST_H
#define HMM_P2P_TEST_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define HMM_P2P_MAX_PAGES	4096

/* hmm_p2p_req.flags */
#define HMM_P2P_WRITE		(1U << 0)	/* fault for write (HMM_PFN_REQ_WRITE) */

struct hmm_p2p_req {
	/* in */
	__u64 addr;		/* page aligned */
	__u64 npages;		/* 1 .. HMM_P2P_MAX_PAGES */
	__u32 domain;		/* the PCI device that would DMA */
	__u8 bus;
	__u8 devfn;
	__u16 flags;
	/* out */
	__s32 fault_ret;	/* hmm_range_fault(): 0 or -errno */
	__s32 alloc_ret;	/* hmm_dma_map_alloc(): 0 or -errno */
	__u32 use_iova;		/* the map links pages into one IOVA range */
	__u32 need_unmap;	/* dma_need_unmap() for the device */
	__u64 mapped;		/* pages with a DMA address */
	__u64 refused;		/* P2P pages the kernel refused to map */
	__u64 failed;		/* other pages that got no DMA address */
	__u64 invalidated;	/* pages the notifier unmapped since the map */
	__u64 unmapped;		/* pages hmm_dma_unmap_pfn() unmapped (UNMAP) */
};

/* hmm_p2p_page.state */
enum hmm_p2p_state {
	HMM_P2P_NONE = 0,	/* hmm_range_fault() gave no valid page */
	HMM_P2P_PLAIN,		/* a page mapped like any page (no P2P) */
	HMM_P2P_HOST_BRIDGE,	/* P2P page mapped through the host bridge: HMM_PFN_P2PDMA */
	HMM_P2P_BUS,		/* P2P page mapped by PCI bus address: HMM_PFN_P2PDMA_BUS */
	HMM_P2P_REFUSED,	/* P2P page the kernel refused: DMA_MAPPING_ERROR */
	HMM_P2P_FAILED,		/* a page that is not P2P and still got no DMA address */
};

/* hmm_p2p_page.bits */
#define HMM_P2P_B_VALID		(1U << 0)	/* HMM_PFN_VALID after the fault */
#define HMM_P2P_B_WRITE		(1U << 1)	/* HMM_PFN_WRITE */
#define HMM_P2P_B_ERROR		(1U << 2)	/* HMM_PFN_ERROR */
#define HMM_P2P_B_P2P_PAGE	(1U << 3)	/* is_pci_p2pdma_page() */
#define HMM_P2P_B_DMA_MAPPED	(1U << 4)	/* HMM_PFN_DMA_MAPPED after the map */
#define HMM_P2P_B_P2PDMA	(1U << 5)	/* HMM_PFN_P2PDMA after the map */
#define HMM_P2P_B_P2PDMA_BUS	(1U << 6)	/* HMM_PFN_P2PDMA_BUS after the map */
#define HMM_P2P_B_INVALIDATED	(1U << 7)	/* the notifier unmapped it */
#define HMM_P2P_B_UNMAPPED	(1U << 8)	/* hmm_dma_unmap_pfn() returned true */
#define HMM_P2P_B_CLEARED	(1U << 9)	/* no DMA flags left after the unmap */

struct hmm_p2p_page {
	__u64 phys;		/* hmm_pfn_to_phys(), 0 when not valid */
	__u64 dma;		/* what hmm_dma_map_pfn() returned */
	__u32 state;		/* enum hmm_p2p_state */
	__u32 bits;		/* HMM_P2P_B_* */
	__u32 map_type;		/* enum pci_p2pdma_map_type for a P2P page, else 0 */
	__u32 pad;
};

#define HMM_P2P_IOC_MAP		_IOWR('H', 0x70, struct hmm_p2p_req)
#define HMM_P2P_IOC_UNMAP	_IOWR('H', 0x71, struct hmm_p2p_req)

#endif /* HMM_P2P_TEST_H */
