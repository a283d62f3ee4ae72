"""Everything GPU, below the planner.

``config`` (the settings), ``devices`` (the device backends), ``pinned`` (the staging pool),
``engine`` (carries out a call's copies), ``public`` (``configure_transfers``,
``transfer_stats``, ``release_pinned``).
"""
