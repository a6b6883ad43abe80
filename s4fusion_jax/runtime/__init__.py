"""What talks to the operating system and the JAX runtime: atomic file writes, the persistent
compilation cache, the multi-host cluster, XLA:CPU's small loops, CPU devices per core, the C
allocator's settings.
Imports nothing else of the package.
"""
