"""The phone networks: each network's media-stream dialect, webhook answers and signature checks, and SMS."""
