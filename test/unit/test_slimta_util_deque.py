import gevent
import pytest
from support.util import GUARD_SECONDS

from slimta.util.deque import BlockingDeque


def test_popleft_blocks_until_append():
    dq = BlockingDeque()
    waiter = gevent.spawn(dq.popleft)
    gevent.idle()
    assert not waiter.ready()
    dq.append("x")
    assert waiter.get(timeout=GUARD_SECONDS) == "x"


def test_counts_follow_items():
    dq = BlockingDeque([1, 2])
    dq.extend([3, 4])
    dq.extendleft([0])
    dq.appendleft(-1)
    assert list(dq) == [-1, 0, 1, 2, 3, 4]
    dq.remove(2)
    assert dq.pop() == 4 and dq.popleft() == -1
    assert [dq.popleft() for _ in range(3)] == [0, 1, 3]
    with gevent.Timeout(0.01, False):
        dq.popleft()
        pytest.fail("popleft should block on an empty deque")


def test_clear_drains_the_count():
    dq = BlockingDeque("abc")
    dq.clear()
    assert len(dq) == 0
    dq.append("z")
    assert dq.pop() == "z"
    with gevent.Timeout(0.01, False):
        dq.pop()
        pytest.fail("pop should block after clear")


def test_popleft_nowait_takes_only_what_is_there():
    dq = BlockingDeque()
    assert dq.popleft_nowait() is None
    marker = object()
    assert dq.popleft_nowait(marker) is marker
    dq.extend(["a", "b"])
    assert dq.popleft_nowait() == "a"
    assert dq.popleft() == "b"  # the count followed: "b" is still there to take
    assert dq.popleft_nowait() is None
    with gevent.Timeout(0.01, False):
        dq.popleft()
        pytest.fail("popleft should block: popleft_nowait took its share of the count")
