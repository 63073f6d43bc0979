"""sipstatus-agent: measures an Asterisk host's load and reports it as the
SIP event package load-status. Collectors (agent.collectors) measure, the
scorer (agent.scoring) derives state and capacity, the sampler
(agent.sampler) puts them into a sipstatus.status.LoadStatus."""

from sipstatus import __version__

__all__ = ["__version__"]
