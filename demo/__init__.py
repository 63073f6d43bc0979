"""`./dev demo`: the whole sipstatus loop on one machine (see demo/loop.py).

Not part of the installed packages: it runs from a checkout, with the
tests' runners for Kamailio, SIPp and the agents.
"""
