"""The running agent under the attacks of issue 17: reflected NOTIFYs, a
flood of messages the core could not parse, password guessing, and a
setting to offer SHA-256 only.  The real agent process, the fake AMI
server, raw UDP peers that see every byte."""

from __future__ import annotations

import asyncio
import re

import pytest

from sipstatus.sip import Request
from sipstatus.sip.digest import DigestClient, challenges_of
from tests.support.agent_faults import QUICK, agent_with_watchers, new_branch, run
from tests.support.agents import SipPeer, Watcher, agent_config, fake_asterisk

pytestmark = pytest.mark.slow


def test_notifies_go_to_the_subscribers_source_not_to_a_contact_naming_a_third_party(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            agent, _, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1")
            victim = await SipPeer("127.0.0.1").open()
            try:
                request = watcher.subscribe(user="forger")
                request.set_header("Contact", f"<sip:victim@127.0.0.1:{victim.port}>")
                request.set_header("Via", re.sub(r"branch=\w+", "branch=z9hG4bKforged",
                                                 request.header("Via") or ""))
                watcher.subscribe(authorization=request)
                assert (await watcher.response(request.call_id)).status == 200
                await watcher.notify(request.call_id, count=3)  # heartbeats: one a second
                return len(watcher.notifies(request.call_id)), len(victim.received)
            finally:
                victim.close()
                watcher.close()
                await agent.kill()

    to_the_subscriber, to_the_victim = run(main())
    assert to_the_subscriber >= 3
    assert to_the_victim == 0


def test_a_flood_of_unparseable_requests_is_logged_in_a_few_lines_without_traceback(tmp_path):
    # An empty Via made an IndexError and a traceback per datagram (issue 17).
    bad = (b"OPTIONS sip:load-status@127.0.0.1 SIP/2.0\r\nVia: \r\nMax-Forwards: 70\r\n"
           b"From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:load-status@127.0.0.1>\r\n"
           b"Call-ID: flood\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")

    async def main():
        async with fake_asterisk() as ami:
            agent, port, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1")
            flooder = await SipPeer("127.0.0.1").open()  # its own socket takes the 400s
            try:
                start = len(agent.lines)
                assert flooder.transport is not None
                for i in range(2000):
                    flooder.transport.sendto(bad, ("127.0.0.1", port))
                    if i % 100 == 99:
                        await asyncio.sleep(0.01)
                request = watcher.subscribe()
                answer = await watcher.response(request.call_id, timeout=30.0)
                await agent.command("status")  # the loop is through the flood
                return answer.status, len(flooder.received), agent.lines[start:]
            finally:
                flooder.close()
                watcher.close()
                await agent.kill()

    status, answered, lines = run(main())
    assert status == 200
    assert answered > 0  # each gets its 400 (those the flooder's buffer held)
    assert not [line for line in lines if "Traceback" in line]
    bad_lines = [line for line in lines if "bad message from" in line]
    assert 1 <= len(bad_lines) <= 10 and "empty Via" in bad_lines[0]


async def _wrong_then_right(watcher: Watcher, wrong: int) -> list[int]:
    """`wrong` SUBSCRIBEs with a wrong password, then one with the right one;
    the final status of each."""
    statuses = []
    for i in range(wrong + 1):
        request = watcher.subscribe(user=f"guess{i}")
        challenge = await watcher.response(request.call_id)
        if challenge.status != 401:
            statuses.append(challenge.status)
            continue
        password = "s3cret" if i == wrong else f"guess{i}"
        retry = new_branch(DigestClient("proxy1", password).authorize(request, challenge))
        watcher.subscribe(authorization=retry)
        statuses.append((await watcher.response(request.call_id, cseq=2)).status)
    return statuses


def _statuses_with_failure_limit_3(tmp_path, wrong: int) -> list[int]:
    """_wrong_then_right against an agent that locks a source out after 3
    failed authentications."""
    async def main():
        async with fake_asterisk() as ami:
            config = agent_config(ami.port, notifier={
                "users": {"proxy1": "s3cret"}, "trust": [], "auth_failure_limit": 3}, **QUICK)
            agent, _, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1", config=config)
            try:
                return await _wrong_then_right(watcher, wrong)
            finally:
                watcher.close()
                await agent.kill()

    return run(main())


def test_repeated_wrong_passwords_from_one_source_get_403_instead_of_a_challenge(tmp_path):
    # Three wrong passwords are challenged again; then even the right one is refused.
    assert _statuses_with_failure_limit_3(tmp_path, 3) == [401, 401, 401, 403]


def test_wrong_passwords_below_the_limit_do_not_lock_a_source_out(tmp_path):
    assert _statuses_with_failure_limit_3(tmp_path, 2) == [401, 401, 200]


def test_sha256_only_challenges_offer_no_md5(tmp_path):
    async def main():
        async with fake_asterisk() as ami:
            config = agent_config(ami.port, notifier={
                "users": {"proxy1": "s3cret"}, "trust": [], "digest_algorithms": ["SHA-256"]}, **QUICK)
            agent, _, (watcher,) = await agent_with_watchers(tmp_path, ami, "127.0.0.1", config=config)
            try:
                request = watcher.subscribe()
                challenge = await watcher.response(request.call_id)
                # An MD5-only peer (SIPp) answers the MD5 challenge it does not get:
                md5 = Request(request.method, request.uri, list(request.headers))
                forged = challenge.headers[:]
                challenge.headers[:] = [(n, v.replace("SHA-256", "MD5")) if n == "WWW-Authenticate" else (n, v)
                                        for n, v in forged]
                retry = new_branch(DigestClient("proxy1", "s3cret").authorize(md5, challenge))
                challenge.headers[:] = forged
                watcher.subscribe(authorization=retry)
                return challenge, await watcher.response(request.call_id, cseq=2)
            finally:
                watcher.close()
                await agent.kill()

    challenge, md5_answer = run(main())
    assert [c.algorithm for c in challenges_of(challenge)] == ["SHA-256"]
    assert md5_answer.status == 401 and "MD5 not offered" in (md5_answer.reason or "")
