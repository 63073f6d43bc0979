# Thin wrapper over ./dev, which works without make on a fresh machine.
.PHONY: demo test check bench deb
demo test check bench deb:
	./dev $@
