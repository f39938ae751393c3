"""Readers and writers for the on-disk contracts: raw episodes, LeRobot datasets, caches, stats."""
