"""A booted guest: SSH transport, boot orchestration, and checks of what the guest sees."""
