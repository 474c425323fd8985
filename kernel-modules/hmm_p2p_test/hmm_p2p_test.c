// SPDX-License-Identifier: GPL-2.0
/*
 * hmm_p2p_test - exercise the HMM DMA mapping path with P2P memory.
 *
 * Since 6.16 an on-demand-paging driver (RDMA ODP) mirrors a process's page table
 * with hmm_range_fault() and maps each page for its device with hmm_dma_map_pfn(),
 * which decides per page whether a PCI P2P page is used by bus address
 * (HMM_PFN_P2PDMA_BUS), through the host bridge (HMM_PFN_P2PDMA) or not at all.
 * Without such a device that code never runs.  This module plays the driver for any
 * PCI device the caller names: it faults in a range of the caller's memory, maps it
 * for that device, and reports per page what the kernel decided (see
 * hmm_p2p_test.h).  The device itself never touches the addresses.
 *
 * Written for p2pdma-testbed; loaded for one run and unloaded after it.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/hmm.h>
#include <linux/hmm-dma.h>
#include <linux/jiffies.h>
#include <linux/memremap.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "hmm_p2p_test.h"

#if !IS_ENABLED(CONFIG_HMM_MIRROR)
#error "hmm_p2p_test needs CONFIG_HMM_MIRROR"
#endif
#if !IS_ENABLED(CONFIG_PCI_P2PDMA)
#error "hmm_p2p_test needs CONFIG_PCI_P2PDMA"
#endif

/* how long the fault loop may retry after invalidations (as ODP drivers do) */
#define HMM_P2P_FAULT_TIMEOUT_MS	HMM_RANGE_DEFAULT_TIMEOUT

/* One open file: at most one mirrored range at a time. */
struct hmm_p2p_ctx {
	struct mutex ioctl_lock;	/* one request at a time */
	struct mutex lock;		/* the map, against the notifier */
	struct mmu_interval_notifier notifier;
	bool registered;
	bool map_alloced;
	struct pci_dev *pdev;
	struct hmm_dma_map map;
	unsigned long start;
	unsigned long npages;
	struct hmm_p2p_page *pages;	/* the report read() returns */
	unsigned long report_pages;
	u64 invalidated;
};

/* Unmap pages [first, last) of the mirror; the caller holds ctx->lock. */
static u64 hmm_p2p_unmap_range(struct hmm_p2p_ctx *ctx, unsigned long first,
			       unsigned long last, u32 bit)
{
	const unsigned long dma_flags = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA |
					HMM_PFN_P2PDMA_BUS;
	unsigned long idx;
	u64 done = 0;

	for (idx = first; idx < last; idx++) {
		if (hmm_dma_unmap_pfn(&ctx->pdev->dev, &ctx->map, idx)) {
			ctx->pages[idx].bits |= bit;
			done++;
		}
		if (!(ctx->map.pfn_list[idx] & dma_flags))
			ctx->pages[idx].bits |= HMM_P2P_B_CLEARED;
		else
			ctx->pages[idx].bits &= ~HMM_P2P_B_CLEARED;
		/* as ODP does: the next fault starts from a clean entry */
		ctx->map.pfn_list[idx] &= ~HMM_PFN_FLAGS;
	}
	return done;
}

static bool hmm_p2p_invalidate(struct mmu_interval_notifier *mni,
			       const struct mmu_notifier_range *range,
			       unsigned long cur_seq)
{
	struct hmm_p2p_ctx *ctx = container_of(mni, struct hmm_p2p_ctx, notifier);
	unsigned long start, end;

	if (mmu_notifier_range_blockable(range))
		mutex_lock(&ctx->lock);
	else if (!mutex_trylock(&ctx->lock))
		return false;

	mmu_interval_set_seq(mni, cur_seq);
	if (ctx->map_alloced) {
		start = max(range->start, ctx->start);
		end = min(range->end, ctx->start + (ctx->npages << PAGE_SHIFT));
		if (start < end)
			ctx->invalidated += hmm_p2p_unmap_range(ctx,
					(start - ctx->start) >> PAGE_SHIFT,
					(end - ctx->start) >> PAGE_SHIFT,
					HMM_P2P_B_INVALIDATED);
	}
	mutex_unlock(&ctx->lock);
	return true;
}

static const struct mmu_interval_notifier_ops hmm_p2p_notifier_ops = {
	.invalidate = hmm_p2p_invalidate,
};

/* Fault the range in; on success returns 0 with ctx->lock held. */
static int hmm_p2p_fault(struct hmm_p2p_ctx *ctx, bool write)
{
	struct mm_struct *mm = ctx->notifier.mm;
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_P2P_FAULT_TIMEOUT_MS);
	struct hmm_range range = {
		.notifier = &ctx->notifier,
		.start = ctx->start,
		.end = ctx->start + (ctx->npages << PAGE_SHIFT),
		.hmm_pfns = ctx->map.pfn_list,
		.default_flags = HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0),
	};
	int ret;

	if (!mmget_not_zero(mm))
		return -EFAULT;
	for (;;) {
		if (time_after(jiffies, timeout)) {
			ret = -EBUSY;
			break;
		}
		range.notifier_seq = mmu_interval_read_begin(&ctx->notifier);
		mmap_read_lock(mm);
		ret = hmm_range_fault(&range);
		mmap_read_unlock(mm);
		if (ret == -EBUSY)
			continue;
		if (ret)
			break;
		mutex_lock(&ctx->lock);
		if (!mmu_interval_read_retry(&ctx->notifier, range.notifier_seq))
			break;
		mutex_unlock(&ctx->lock);
	}
	mmput(mm);
	return ret;
}

/* Map every valid page for the device and fill the report; ctx->lock held. */
static void hmm_p2p_map_pages(struct hmm_p2p_ctx *ctx, struct hmm_p2p_req *req)
{
	struct device *dev = &ctx->pdev->dev;
	struct pci_p2pdma_map_state p2p = {};
	unsigned long idx;

	for (idx = 0; idx < ctx->npages; idx++) {
		struct hmm_p2p_page *out = &ctx->pages[idx];
		unsigned long pfn = ctx->map.pfn_list[idx];
		struct page *page;
		dma_addr_t dma;

		memset(out, 0, sizeof(*out));
		if (pfn & HMM_PFN_ERROR)
			out->bits |= HMM_P2P_B_ERROR;
		if (!(pfn & HMM_PFN_VALID) || (pfn & HMM_PFN_ERROR)) {
			out->state = HMM_P2P_NONE;
			continue;
		}
		out->bits |= HMM_P2P_B_VALID;
		if (pfn & HMM_PFN_WRITE)
			out->bits |= HMM_P2P_B_WRITE;
		page = hmm_pfn_to_page(pfn);
		out->phys = hmm_pfn_to_phys(pfn);
		if (is_pci_p2pdma_page(page))
			out->bits |= HMM_P2P_B_P2P_PAGE;

		dma = hmm_dma_map_pfn(dev, &ctx->map, idx, &p2p);
		pfn = ctx->map.pfn_list[idx];
		if (out->bits & HMM_P2P_B_P2P_PAGE)
			out->map_type = p2p.map;
		if (pfn & HMM_PFN_DMA_MAPPED)
			out->bits |= HMM_P2P_B_DMA_MAPPED;
		if (pfn & HMM_PFN_P2PDMA)
			out->bits |= HMM_P2P_B_P2PDMA;
		if (pfn & HMM_PFN_P2PDMA_BUS)
			out->bits |= HMM_P2P_B_P2PDMA_BUS;

		if (dma == DMA_MAPPING_ERROR) {
			bool p2p_page = out->bits & HMM_P2P_B_P2P_PAGE;

			out->dma = 0;
			out->state = p2p_page ? HMM_P2P_REFUSED : HMM_P2P_FAILED;
			if (p2p_page)
				req->refused++;
			else
				req->failed++;
			continue;
		}
		out->dma = dma;
		req->mapped++;
		if (pfn & HMM_PFN_P2PDMA_BUS)
			out->state = HMM_P2P_BUS;
		else if (pfn & HMM_PFN_P2PDMA)
			out->state = HMM_P2P_HOST_BRIDGE;
		else
			out->state = HMM_P2P_PLAIN;
	}
}

/* Drop the mirror: unmap what is mapped, free the map, remove the notifier. */
static u64 hmm_p2p_release_mirror(struct hmm_p2p_ctx *ctx)
{
	u64 unmapped = 0;

	if (ctx->registered) {
		mmu_interval_notifier_remove(&ctx->notifier);
		ctx->registered = false;
	}
	/* the notifier is gone: nothing else touches the map now */
	if (ctx->map_alloced) {
		mutex_lock(&ctx->lock);
		unmapped = hmm_p2p_unmap_range(ctx, 0, ctx->npages, HMM_P2P_B_UNMAPPED);
		hmm_dma_map_free(&ctx->pdev->dev, &ctx->map);
		ctx->map_alloced = false;
		mutex_unlock(&ctx->lock);
	}
	if (ctx->pdev) {
		pci_dev_put(ctx->pdev);
		ctx->pdev = NULL;
	}
	return unmapped;
}

static int hmm_p2p_do_map(struct hmm_p2p_ctx *ctx, struct hmm_p2p_req *req)
{
	struct hmm_p2p_page *pages;
	struct pci_dev *pdev;
	int ret;

	if (ctx->registered || ctx->map_alloced)
		return -EBUSY;
	if (!req->npages || req->npages > HMM_P2P_MAX_PAGES ||
	    !PAGE_ALIGNED(req->addr) || req->flags & ~HMM_P2P_WRITE)
		return -EINVAL;
	if (req->addr + (req->npages << PAGE_SHIFT) < req->addr ||
	    req->addr + (req->npages << PAGE_SHIFT) > TASK_SIZE)
		return -EINVAL;

	pdev = pci_get_domain_bus_and_slot(req->domain, req->bus, req->devfn);
	if (!pdev)
		return -ENODEV;
	pages = kvcalloc(req->npages, sizeof(*pages), GFP_KERNEL);
	if (!pages) {
		pci_dev_put(pdev);
		return -ENOMEM;
	}
	kvfree(ctx->pages);
	ctx->pages = pages;
	ctx->report_pages = 0;
	ctx->pdev = pdev;
	ctx->start = req->addr;
	ctx->npages = req->npages;
	ctx->invalidated = 0;
	req->fault_ret = req->alloc_ret = 0;
	req->mapped = req->refused = req->failed = req->invalidated = req->unmapped = 0;

	req->alloc_ret = hmm_dma_map_alloc(&pdev->dev, &ctx->map, req->npages, PAGE_SIZE);
	if (req->alloc_ret) {
		ret = 0;	/* reported in the request, not an ioctl failure */
		goto out_put;
	}
	ctx->map_alloced = true;
	req->use_iova = dma_use_iova(&ctx->map.state);
	req->need_unmap = dma_need_unmap(&pdev->dev);

	ret = mmu_interval_notifier_insert(&ctx->notifier, current->mm, ctx->start,
					   ctx->npages << PAGE_SHIFT, &hmm_p2p_notifier_ops);
	if (ret)
		goto out_free;
	ctx->registered = true;

	req->fault_ret = hmm_p2p_fault(ctx, req->flags & HMM_P2P_WRITE);
	if (req->fault_ret) {
		hmm_p2p_release_mirror(ctx);
		return 0;
	}
	hmm_p2p_map_pages(ctx, req);
	ctx->report_pages = ctx->npages;
	mutex_unlock(&ctx->lock);
	return 0;

out_free:
	hmm_dma_map_free(&pdev->dev, &ctx->map);
	ctx->map_alloced = false;
out_put:
	pci_dev_put(pdev);
	ctx->pdev = NULL;
	return ret;
}

static long hmm_p2p_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct hmm_p2p_ctx *ctx = file->private_data;
	void __user *uarg = (void __user *)arg;
	struct hmm_p2p_req req;
	int ret = 0;

	if (cmd != HMM_P2P_IOC_MAP && cmd != HMM_P2P_IOC_UNMAP)
		return -ENOTTY;
	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;

	mutex_lock(&ctx->ioctl_lock);
	if (cmd == HMM_P2P_IOC_MAP) {
		if (current->mm == NULL)
			ret = -EINVAL;
		else
			ret = hmm_p2p_do_map(ctx, &req);
	} else {
		if (!ctx->registered && !ctx->map_alloced) {
			ret = -ENOENT;
		} else {
			req.invalidated = ctx->invalidated;
			req.unmapped = hmm_p2p_release_mirror(ctx);
		}
	}
	mutex_unlock(&ctx->ioctl_lock);
	if (!ret && copy_to_user(uarg, &req, sizeof(req)))
		ret = -EFAULT;
	return ret;
}

static ssize_t hmm_p2p_read(struct file *file, char __user *buf, size_t count,
			    loff_t *ppos)
{
	struct hmm_p2p_ctx *ctx = file->private_data;
	size_t size;
	ssize_t ret;

	mutex_lock(&ctx->ioctl_lock);
	mutex_lock(&ctx->lock);
	size = ctx->report_pages * sizeof(*ctx->pages);
	ret = simple_read_from_buffer(buf, count, ppos, ctx->pages, size);
	mutex_unlock(&ctx->lock);
	mutex_unlock(&ctx->ioctl_lock);
	return ret;
}

static int hmm_p2p_open(struct inode *inode, struct file *file)
{
	struct hmm_p2p_ctx *ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);

	if (!ctx)
		return -ENOMEM;
	mutex_init(&ctx->ioctl_lock);
	mutex_init(&ctx->lock);
	file->private_data = ctx;
	return 0;
}

static int hmm_p2p_release(struct inode *inode, struct file *file)
{
	struct hmm_p2p_ctx *ctx = file->private_data;

	hmm_p2p_release_mirror(ctx);
	kvfree(ctx->pages);
	kfree(ctx);
	return 0;
}

static const struct file_operations hmm_p2p_fops = {
	.owner = THIS_MODULE,
	.open = hmm_p2p_open,
	.release = hmm_p2p_release,
	.read = hmm_p2p_read,
	.llseek = default_llseek,
	.unlocked_ioctl = hmm_p2p_ioctl,
};

static struct miscdevice hmm_p2p_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "hmm_p2p_test",
	.fops = &hmm_p2p_fops,
	.mode = 0600,
};

static int __init hmm_p2p_init(void)
{
	return misc_register(&hmm_p2p_misc);
}

static void __exit hmm_p2p_exit(void)
{
	misc_deregister(&hmm_p2p_misc);
}

module_init(hmm_p2p_init);
module_exit(hmm_p2p_exit);
MODULE_DESCRIPTION("p2pdma-testbed: HMM P2P DMA mapping test (hmm_range_fault + hmm_dma_map_pfn)");
MODULE_LICENSE("GPL");
