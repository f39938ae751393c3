"""The engine of `vla`: one recipe per stage plus the building blocks they share.

Arrows go one way: `vlacli -> stages -> schemas`. Nothing here imports `vlacli`; building blocks
(`data`, `signal`, `model`, `objectives`, `training`, `probes`, `sim`) never import the recipes.
"""
