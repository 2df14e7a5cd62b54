import numpy as np
import pytest

import resil


def test_columns_broadcast_and_masks_follow_the_models():
    fs = resil.FaultSet(site="fc.weight", index=[0, 1, 2], bit=4, model=[resil.BitFlip(), resil.Burst(3), resil.StuckAt(1)])
    assert len(fs) == 3
    assert fs.mask.tolist() == [1 << 4, 0b111 << 4, 1 << 4]
    assert fs.batch.tolist() == [-1, -1, -1]


def test_dict_round_trip_keeps_every_column():
    fs = resil.FaultSet(
        site=["a.weight", "b:out", "a.weight"],
        index=[3, 4, 5],
        mask=[1, 6, 0],
        model=[resil.BitFlip(), resil.StuckAt(0), resil.RandomValue(9)],
        batch=[-1, 2, -1],
    )
    d = fs.to_dict()
    assert d["site"].tolist() == ["a.weight", "b:out", "a.weight"]
    assert d["model"].tolist() == ["bitflip", 'stuck_at:{"value": 0}', 'random_value:{"seed": 9}']
    back = resil.FaultSet.from_dict({k: v.tolist() for k, v in d.items()})
    assert list(back) == list(fs)
    assert [f.batch for f in back] == [None, 2, None]


def test_concat_and_select():
    a = resil.FaultSet(site="x", index=[1, 2], bit=0)
    b = resil.FaultSet(site=["y", "x"], index=[3, 4], bit=1, model=resil.StuckAt(1))
    c = resil.FaultSet.concat([a, b])
    assert [(f.site, f.index, f.bits, type(f.model).__name__) for f in c] == [
        ("x", 1, (0,), "BitFlip"), ("x", 2, (0,), "BitFlip"), ("y", 3, (1,), "StuckAt"), ("x", 4, (1,), "StuckAt")]
    assert [f.index for f in c[np.array([True, False, False, True])]] == [1, 4]


def test_from_faults_flattens_tuple_indices_with_the_site_shape():
    fs = resil.FaultSet.from_faults([resil.Fault("w", (1, 2), bit=3)], {"w": (3, 4)})
    assert fs.index.tolist() == [1 * 4 + 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(site="w", index=[1, 2], bit=[1, 2, 3]), "different lengths"),
        (dict(site="w", index=[-1], bit=1), "negative element index -1"),
        (dict(site="w", index=[0], bit=64), "bit 64 is outside any encoding"),
        (dict(site="w", index=[0.5], bit=1), "index must be integers"),
        (dict(site="w", index=[0]), "BitFlip needs a bit"),
        (dict(site="w", index=[0], bit=1, batch=-2), "batch element -2 is negative"),
        (dict(site="w", index=[0], bit=62, model=resil.Burst(3)), "runs past bit 63"),
    ],
)
def test_bad_columns_are_named(kwargs, message):
    with pytest.raises(resil.FaultError, match=message):
        resil.FaultSet(**kwargs)


def test_unregistered_models_cannot_be_serialized():
    fs = resil.FaultSet(site="w", index=[0], model=resil.ValueFunction(abs))
    with pytest.raises(resil.FaultError, match="not registered"):
        fs.to_dict()
    with pytest.raises(resil.FaultError, match="unknown fault model 'nope'"):
        resil.FaultSet.from_dict({"site": ["w"], "index": [0], "mask": [1], "model": ["nope"]})


def test_step_windows_round_trip():
    fs = resil.FaultSet.from_faults([resil.Fault("a:out", 0, bit=1, step=3), resil.Fault("a:out", 1, bit=1, step=(2, 5)),
                                     resil.Fault("a:out", 2, bit=1)])
    assert fs.t_start.tolist()[:2] == [3, 2] and fs.t_stop.tolist()[:2] == [4, 5]
    assert [f.step for f in resil.FaultSet.from_dict(fs.to_dict())] == [3, (2, 5), None]
    with pytest.raises(resil.FaultError, match=r"empty or negative step window \[4, 4\)"):
        resil.FaultSet(site="a", index=0, bit=1, step=4, step_stop=4)


def test_random_value_rejects_negative_seeds():
    with pytest.raises(resil.FaultError, match="non-negative integer seed"):
        resil.RandomValue(-1)
