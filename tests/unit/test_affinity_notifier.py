"""A notifier whose bodies differ per subscription (produce_for), as the
agent's load-affinity notifier is (spec/load-affinity.md sections 2 and 6):
pages of a full set follow one another 100 ms apart, every SUBSCRIBE
(refresh included) starts a full set, and a notifier leaves a SUBSCRIBE for
another package of the endpoint to that package's notifier."""

import random

from sipstatus.affinity import MEDIA_TYPE, PACKAGE, Kind, affinity_key, decode, encode
from sipstatus.affinity_feed import AffinityFeed
from sipstatus.sip.identifiers import IdGenerator
from sipstatus.sip.notifier import Notifier
from tests.support.notifier_driver import PROXY, drive, notifies, ok, responses, subscribe


def affinity_notifier(feed: AffinityFeed) -> Notifier:
    readers: dict = {}

    def produce_for(sub, now):
        reader, seen = readers.get(sub.id, (feed.reader(), 0))
        if seen != sub.subscribes:
            reader.restart()
        readers[sub.id] = (reader, sub.subscribes)
        return encode(reader.next_body(now)), reader.more

    return Notifier(PACKAGE, MEDIA_TYPE, "sip:agent@192.0.2.1:5060", heartbeat=feed.refresh,
                    produce_for=produce_for, other_packages=["load-status"],
                    ids=IdGenerator(random.Random(1).randbytes))


def feed_with(rooms: int) -> AffinityFeed:
    feed = AffinityFeed("ast1", "i1", 900)
    feed.update(affinity_key(str(r)) for r in range(rooms))
    return feed


def sent_until(n: Notifier, first_out: list, now: float, until: float) -> list[tuple[float, object]]:
    """The NOTIFYs of `first_out` (answered 200 at `now`) and those the
    timers send up to `until` (answered at once), with their times."""
    sent = [(now, o) for o in notifies(first_out)]
    for _, o in list(sent):
        sent += [(now, x) for x in notifies(ok(n, o, now))]
    sent += [(t, o) for t, o in drive(n, until) if hasattr(o, "request")]
    return sent


def test_the_pages_of_a_full_set_go_100_ms_apart_after_the_subscribe():
    n = affinity_notifier(feed_with(75))  # 3 pages
    sent = sent_until(n, n.handle_request(subscribe(event=PACKAGE), PROXY, 0.0), 0.0, 1.0)
    pages = [(t, decode(o.request.body)) for t, o in sent]
    assert [(b.kind, b.page, b.pages) for _, b in pages] == [(Kind.FULL, i, 3) for i in (1, 2, 3)]
    assert [round(t, 3) for t, _ in pages] == [0.0, 0.1, 0.2]


def test_a_refresh_starts_a_full_set_again():
    n = affinity_notifier(feed_with(3))
    out = n.handle_request(subscribe(event=PACKAGE), PROXY, 0.0)
    (answer,) = responses(out)
    ok(n, notifies(out)[0], 0.0)
    refresh = subscribe(event=PACKAGE, to_tag=answer.to_addr.tag, cseq=2)
    sent = sent_until(n, n.handle_request(refresh, PROXY, 10.0), 10.0, 10.5)
    assert [decode(o.request.body).kind for _, o in sent] == [Kind.FULL]


def test_a_change_goes_as_a_delta_within_the_ceiling():
    feed = feed_with(3)
    n = affinity_notifier(feed)
    out = n.handle_request(subscribe(event=PACKAGE), PROXY, 0.0)
    ok(n, notifies(out)[0], 0.0)
    feed.update([affinity_key("new")])
    out = n.state_changed(None, 5.0, True)
    (delta,) = notifies(out)
    body = decode(delta.request.body)
    assert body.kind is Kind.DELTA and body.add == (affinity_key("new"),) and len(body.remove) == 3


def test_a_subscribe_for_the_other_package_is_left_to_its_notifier():
    n = affinity_notifier(feed_with(1))
    assert n.handle_request(subscribe(event="load-status"), PROXY, 0.0) is None


def test_a_subscribe_for_an_unknown_package_still_gets_489_naming_both():
    n = affinity_notifier(feed_with(1))
    (answer,) = responses(n.handle_request(subscribe(event="presence"), PROXY, 0.0))
    assert answer.status == 489 and answer.header("Allow-Events") == f"{PACKAGE}, load-status"


def test_a_final_notify_carries_no_page():
    n = affinity_notifier(feed_with(1))
    out = n.handle_request(subscribe(event=PACKAGE), PROXY, 0.0)
    ok(n, notifies(out)[0], 0.0)
    (final,) = notifies(n.terminate_all("probation", 1.0, retry_after=2))
    assert final.request.body == b"" and "terminated" in final.request.header("Subscription-State")
