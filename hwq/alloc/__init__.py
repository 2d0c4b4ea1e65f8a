"""Per-layer bit allocation: what each precision option costs a layer in loss
(``hwq.alloc.sensitivity``, torch) and which option each group of layers gets under a latency
budget (``hwq.alloc.problem`` and ``hwq.alloc.solve``, pure: numpy and scipy).

This package imports nothing on purpose, so that ``import hwq.alloc.solve`` never loads torch or
tvm; import the submodules by name.
"""
