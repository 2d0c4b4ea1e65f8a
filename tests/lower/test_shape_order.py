"""The shape functions' stores in slot order (hwq.lower.shape_order), before/expected IR."""

import tvm
from tvm.script import tirx as T

from hwq.lower.shape_order import SortShapeFuncStores, stores_in_slot_order


@T.prim_func(s_tir=True)
def _shuffled(H: T.Buffer((T.int64(4),), "int64")):
    T.func_attr({"tirx.is_host_func": True})
    H[T.int64(3)] = T.int64(40) * H[T.int64(0)]
    H[T.int64(1)] = H[T.int64(0)] * T.int64(28) * T.int64(28)
    H[T.int64(2)] = T.int64(16) * H[T.int64(0)]


@T.prim_func(s_tir=True)
def _sorted(H: T.Buffer((T.int64(4),), "int64")):
    T.func_attr({"tirx.is_host_func": True})
    H[T.int64(1)] = H[T.int64(0)] * T.int64(28) * T.int64(28)
    H[T.int64(2)] = T.int64(16) * H[T.int64(0)]
    H[T.int64(3)] = T.int64(40) * H[T.int64(0)]


@T.prim_func(s_tir=True)
def _dependent(H: T.Buffer((T.int64(4),), "int64")):
    T.func_attr({"tirx.is_host_func": True})
    H[T.int64(3)] = T.int64(40) * H[T.int64(0)]
    H[T.int64(2)] = H[T.int64(3)] + T.int64(1)


@T.prim_func(s_tir=True)
def _device(H: T.Buffer((T.int64(4),), "int64")):
    H[T.int64(3)] = T.int64(40) * H[T.int64(0)]
    H[T.int64(2)] = T.int64(16) * H[T.int64(0)]


def _same(a, b):
    # TVMScript names each function after its Python name; compare all but that
    tvm.ir.assert_structural_equal(a.without_attr("global_symbol"), b.without_attr("global_symbol"))


def test_independent_stores_are_sorted_by_slot():
    _same(stores_in_slot_order(_shuffled), _sorted)
    mod = SortShapeFuncStores(tvm.IRModule({"shape_func": _shuffled}))
    _same(mod["shape_func"], _sorted)


def test_a_store_that_reads_another_stores_slot_keeps_its_order():
    assert stores_in_slot_order(_dependent) is None
    mod = SortShapeFuncStores(tvm.IRModule({"shape_func": _dependent}))
    _same(mod["shape_func"], _dependent)


def test_only_host_functions_are_touched():
    assert stores_in_slot_order(_device) is None
