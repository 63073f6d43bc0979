"""Records confbridge_rooms.txt here: what the agent's AMI user sees of
ConfBridge rooms on Asterisk 22.10.1 (README.txt says what it holds). Run
from the repository's root, with the Asterisk build of tests/peers/asterisk.sh
in the cache:

    SIPSTATUS_PEER_SOURCES=/path/to/peers .venv/bin/python tests/data/ami/22/record_rooms.py

The configuration is tests/support/asterisk.py's with the dialplan of
tests/real/test_confbridge_live.py (extension room-NNNN: Set(TENANT=acme),
ConfBridge(NNNN)) and manager.conf channelvars = TENANT.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE))

from record import AGENT_EVENTS, Recorder, action  # noqa: E402

from tests.support.asterisk import Asterisk, AsteriskConfig, Calls, asterisk_prefix  # noqa: E402

ROOMS = """exten => _room-.,1,Answer()
 same => n,Set(TENANT=acme)
 same => n,ConfBridge(${EXTEN:5})
 same => n,Hangup()
"""


async def main() -> None:
    prefix, why = asterisk_prefix()
    if prefix is None:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        asterisk = Asterisk(prefix, tmp_path / "asterisk",
                            AsteriskConfig(dialplan=ROOMS, manager_general="channelvars = TENANT"))
        asterisk.start()
        try:
            rec = Recorder("confbridge_rooms", asterisk.ami_port)
            rec.login("agent", asterisk.agent_secret, AGENT_EVENTS)
            rec.pump(0.3)
            rec.send(action("ConfbridgeListRooms", "rooms-1"))
            rec.until("ActionID: rooms-1", 5.0)
            long = await Calls(asterisk, "room-5001", 2, hold=8, tmp=tmp_path).start()
            short = await Calls(asterisk, "room-5002", 1, hold=4, tmp=tmp_path).start()
            await asyncio.to_thread(rec.pump, 2.5)
            rec.send(action("ConfbridgeListRooms", "rooms-2"))
            rec.until("ConfbridgeListRoomsComplete", 5.0)
            rec.send(action("ConfbridgeList", "list-1", Conference="5001"))
            rec.until("ConfbridgeListComplete", 5.0)
            await short.finish()
            await long.finish()
            await asyncio.to_thread(rec.pump, 1.5)
            rec.send(action("ConfbridgeListRooms", "rooms-3"))
            rec.until("ActionID: rooms-3", 5.0)
            rec.logoff()
            rec.save("two rooms: 5001 (two callers, 8 s), 5002 (one caller, 4 s)")
        finally:
            asterisk.kill()


if __name__ == "__main__":
    asyncio.run(main())
