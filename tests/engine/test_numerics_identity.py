"""One numerics identity per cache entry: what changes the pixels (here the CPU thread count)
is in the fingerprint, so engines that differ only in it never share teleport entries,
while identical engines still do."""

import numpy as np
import torch

import zturbo
from zturbo.engine.placement import numerics_identity

from conftest import pixels

SIZE = {"width": 64, "height": 64}


def test_cpu_identity_names_threads_and_simd_level():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = numerics_identity(torch.device("cpu"))
        torch.set_num_threads(2)
        two = numerics_identity(torch.device("cpu"))
    finally:
        torch.set_num_threads(old)
    assert one["threads"] == 1 and two["threads"] == 2
    assert one["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_engines_share_teleport_entries_only_with_the_same_thread_count():
    old = torch.get_num_threads()
    a, b = zturbo.load("demo"), zturbo.load("demo")  # one state dir: a shared disk tier
    try:
        torch.set_num_threads(1)
        first = a.generate("a lighthouse", seed=3, **SIZE)
        assert first.teleport[0]["hit"] is False and first.teleport[0]["stored"]
        same = b.generate("a lighthouse", seed=3, **SIZE)  # identical engine: shares
        assert same.teleport[0]["hit"] is True and same.teleport[0]["tier"] == "disk"
        assert np.array_equal(pixels(same.images[0]), pixels(first.images[0]))
        one_thread = b.fingerprint
        torch.set_num_threads(2)
        assert b.fingerprint != one_thread
        other = b.generate("a lighthouse", seed=3, **SIZE)  # differs only in threads
        assert other.teleport[0]["hit"] is False
        again = a.generate("a lighthouse", seed=3, **SIZE)  # a at 2 threads: b's 2-thread entry
        assert again.teleport[0]["hit"] is True
        assert np.array_equal(pixels(again.images[0]), pixels(other.images[0]))
    finally:
        torch.set_num_threads(old)
