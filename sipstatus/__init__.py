"""sipstatus: live load status of Asterisk nodes, delivered over SIP.

The library both sides import: the `LoadStatus` model and its codec, a
sans-I/O SIP core (`sipstatus.sip`), and the proxy side.
"""

__version__ = "0.1.0"
