import random

from sipstatus.sip.identifiers import MAGIC_COOKIE, IdGenerator


def test_branch_starts_with_the_magic_cookie_and_carries_128_bits():
    branch = IdGenerator().branch()
    assert branch.startswith(MAGIC_COOKIE)
    assert len(branch) == len(MAGIC_COOKIE) + 32


def test_ids_come_from_the_injected_random_source():
    a = IdGenerator(random.Random(1).randbytes)
    b = IdGenerator(random.Random(1).randbytes)
    assert [a.branch(), a.tag(), a.call_id()] == [b.branch(), b.tag(), b.call_id()]


def test_call_id_names_the_host_when_given():
    assert IdGenerator().call_id("agent.example.com").endswith("@agent.example.com")


def test_successive_ids_differ():
    ids = IdGenerator()
    assert len({ids.tag() for _ in range(100)}) == 100
