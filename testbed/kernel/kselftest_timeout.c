// SPDX-License-Identifier: GPL-2.0
/*
 * p2pdma-testbed: the kselftest harness's per-test bound, scaled at run time.
 *
 * kselftest_harness.h waits for each test's child with poll() on its pidfd, for
 * TEST_TIMEOUT_DEFAULT seconds (30, compiled in) or a TEST_F_TIMEOUT's own, then kills
 * it and reports "Test terminated by timeout".  Under TCG on a busy host a test that
 * takes 8 s on an idle one can pass that bound.  Linked into a selftest program with
 * -Wl,--wrap=poll, this makes every poll() of the program that has a positive timeout
 * wait TESTBED_KSFT_TIMEOUT_FACTOR times as long (unset, unparsable or <= 1: unchanged).
 * A poll() that is answered returns as before; only the waiting for what does not come
 * is longer.  Nothing else of the program changes.
 */
#include <limits.h>
#include <poll.h>
#include <stdlib.h>

int __real_poll(struct pollfd *fds, nfds_t nfds, int timeout);
int __wrap_poll(struct pollfd *fds, nfds_t nfds, int timeout);

int __wrap_poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	const char *text = getenv("TESTBED_KSFT_TIMEOUT_FACTOR");
	double factor = text ? strtod(text, NULL) : 1.0;

	if (timeout > 0 && factor > 1.0) {
		double scaled = (double)timeout * factor;

		timeout = scaled >= (double)INT_MAX ? INT_MAX : (int)scaled;
	}
	return __real_poll(fds, nfds, timeout);
}
