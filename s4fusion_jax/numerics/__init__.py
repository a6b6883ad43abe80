"""Numerics as pure functions of arrays (no Flax, no I/O): the selective scan and its backends,
the scan paths and the interleave of Cross SS2D, the size rule and buckets, YCrCb, Sobel, the
depthwise convolution.
"""
