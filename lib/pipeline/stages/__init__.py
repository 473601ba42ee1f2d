"""One module per stage: `run(inputs, root) -> outputs` plus the steps its notebook displays.

The decisions of a stage (what to register, whether to roll back...) live here, so a notebook only
narrates and plots, and the in-process executor can run a stage without a kernel.
"""
