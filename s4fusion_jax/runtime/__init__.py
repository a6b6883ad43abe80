"""What talks to the operating system and the JAX runtime: atomic file writes, the persistent
compilation cache, the multi-host cluster.
Imports nothing else of the package.
"""
