"""Small runnable examples of the core: Meta-Weight-Net on noisy digits and the check-hypergrad demo problem."""
