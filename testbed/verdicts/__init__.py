"""Verdicts: what Linux should do for each (provider, client) pair (:mod:`.predict`),
what the guest showed it did (:mod:`.observe`), and the judged record that holds
both (:mod:`.record`)."""
