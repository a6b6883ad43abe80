"""Objectives and measures, pure: the loss terms and their total, the fusion metrics.
"""
